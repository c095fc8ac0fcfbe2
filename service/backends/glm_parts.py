"""The parts of the GLM-4V backend that are about the checkpoint, not about generating: its identity, a
processor that works without torchvision, and stopping criteria driven by events.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def model_version_of(path: str, commit_hash: str | None = None) -> str:
    """A short stable id for the weights at `path`.

    A hub-cache snapshot gives its commit (a hub id gives `commit_hash`, known once loaded); any other local
    folder gives 12 hex digits of a hash over config.json and the weight files' names and sizes (hashing
    gigabytes of weights at every start would cost minutes).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return commit_hash[:12] if commit_hash else "unresolved"
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name[:12]
    digest = hashlib.sha256(config.read_bytes() if (config := folder / "config.json").is_file() else b"")
    for weights in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
        digest.update(f"{weights.name}:{weights.stat().st_size}\n".encode())
    return digest.hexdigest()[:12]


def image_only_processor(path: str, local: bool) -> Any:
    """GLM-4V's processor without its torchvision-only video processor (images are all we send)."""
    import transformers
    from transformers import AutoTokenizer, Glm4vImageProcessorPil, Glm4vProcessor

    class ImageOnlyGlm4vProcessor(Glm4vProcessor):
        # ProcessorMixin takes its sub-processors from this signature, so dropping `video_processor` here is
        # what lets the processor exist without torchvision; Glm4vProcessor's token expansion is unchanged.
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    declared, _ = Glm4vImageProcessorPil.get_image_processor_dict(path, local_files_only=local)
    pil_class = getattr(transformers, f"{declared.get('image_processor_type')}Pil", Glm4vImageProcessorPil)
    image_processor = pil_class.from_pretrained(path, local_files_only=local)
    return ImageOnlyGlm4vProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)


def until_set(*events: threading.Event) -> Any:
    """Stopping criteria that end generation once any of `events` is set (a reader gone, a timeout)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class UntilEvent(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            stop = any(event.is_set() for event in events)
            return torch.full((len(input_ids),), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([UntilEvent()])
