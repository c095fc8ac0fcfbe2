"""GLM-4V (GLM-4.6V-Flash) in-process through Hugging Face transformers.

One backend owns one model on one device. Prompts are built with the processor's own chat template from the
checkpoint, so the visual token count, `mm_token_type_ids` and the 3-D rotary positions are exactly what the
model was trained with. On a CPU box (torchvision cannot be installed beside CPU torch) `AutoProcessor` fails
because GLM-4V's video processor needs torchvision; we then build the same `Glm4vProcessor` without a video
processor, from the PIL image processor and the tokenizer, which expands `<|image|>` identically.

Request values rule over config ones, except that `[model] max_new_tokens` caps every request, so an API
client cannot ask a 12 GB card for 32k tokens.
"""

from __future__ import annotations

import contextvars
import gc
import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from service.backends.base import Answer, OnText, Request, single_image_request
from service.backends.glm_parts import image_only_processor, model_version_of, until_set
from service.config import Config
from service.errors import OutOfMemoryError, PermanentError, TuwenError
from service.messages import msg
from service.reasoning import ReasoningFilter, split_reasoning

if TYPE_CHECKING:
    import torch

log = logging.getLogger(f"tuwen.{__name__}")
gen_log = logging.getLogger("tuwen.generate")
vision_log = logging.getLogger("tuwen.vision")

# bitsandbytes must leave the vision tower (its patch embedding is a Conv3d, and it is small) and the output
# head in full precision; quantizing them costs accuracy for little memory.
QUANT_SKIP_MODULES = ["model.visual", "lm_head"]


def _tagged(request: Request) -> dict[str, str] | None:
    """Log `extra` naming this row's own job (a batch's job context names every job in the batch)."""
    return {"tuwen_job": request.job_id} if request.job_id and request.job_id != "-" else None


def _summary(exc: BaseException) -> str:
    """An exception as one short line (transformers' messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


class TransformersBackend:
    """A GLM-4V checkpoint loaded with transformers (see the module docstring)."""

    name = "transformers"
    answer_kind = "model"

    def __init__(self, config: Config) -> None:
        self.settings = config.model
        self.model_id = config.model.path
        self.model_version = model_version_of(config.model.path)
        self.device = "cpu"
        self.image_only_processor = False  # True when the torchvision-free fallback was taken
        self._model: Any = None
        self._processor: Any = None
        self._stop_ids: set[int] = set()
        # Set by `cancel()`: every generate() stops at its next token (a stuck job the watchdog gave up on).
        self._cancel = threading.Event()

    def _load_failed(self, reason: object) -> PermanentError:
        return PermanentError(msg("model_load_failed", path=self.model_id, reason=reason))

    def load(self) -> None:
        """Load weights and processor (offline for a local folder), then warm up when configured."""
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
            # The default install is the embedded OCR stack only: say exactly what to install.
            raise PermanentError(msg("gpu_extra_missing"))
        import torch

        started = time.monotonic()
        path = self.model_id
        local = Path(path).expanduser().is_dir()
        # A hub id is "owner/name"; anything absolute, home- or dot-relative or deeper must be a folder.
        if not local and (path.startswith(("/", "~", ".")) or path.count("/") > 1 or "\\" in path):
            raise self._load_failed("folder not found")
        path = str(Path(path).expanduser()) if local else path
        self.device, dtype = self._device_and_dtype()
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local}
        if (quantization := self._quantization_config(dtype)) is not None:
            kwargs["quantization_config"] = quantization
        if self.device == "cuda":
            kwargs["device_map"] = "cuda"
        try:
            from transformers import AutoModelForImageTextToText

            self._model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).eval()
            self._processor = self._load_processor(path, local)
        except torch.cuda.OutOfMemoryError as exc:
            self.close()
            raise self._load_failed('out of GPU memory while loading; try quantization = "4bit"') from exc
        except Exception as exc:
            self.close()
            raise self._load_failed(_summary(exc)) from exc
        tokenizer = self._processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        eos = self._model.generation_config.eos_token_id
        self._stop_ids = {*(eos if isinstance(eos, list) else [eos]), tokenizer.pad_token_id} - {None}
        self.model_version = model_version_of(path, getattr(self._model.config, "_commit_hash", None))
        log.info(
            "loaded %s (version %s) on %s, %s, quantization %s, in %.1f s",
            self.model_id,
            self.model_version,
            self.device,
            dtype,
            self.settings.quantization,
            time.monotonic() - started,
        )
        if self.settings.warmup:
            self._warm_up()

    def _device_and_dtype(self) -> tuple[str, torch.dtype]:
        import torch

        wanted, has_cuda = self.settings.device, torch.cuda.is_available()
        if wanted == "cuda" and not has_cuda:
            raise self._load_failed('device = "cuda" but torch sees no CUDA GPU')
        device = "cuda" if wanted == "cuda" or (wanted == "auto" and has_cuda) else "cpu"
        if self.settings.dtype == "auto":
            # bf16 halves memory on GPUs; CPUs run float32 much faster than emulated bf16.
            return device, torch.bfloat16 if device == "cuda" else torch.float32
        return device, getattr(torch, self.settings.dtype)

    def _quantization_config(self, dtype: torch.dtype) -> Any:
        quantization = self.settings.quantization
        if quantization == "none":
            return None
        if self.device != "cuda":
            raise self._load_failed(
                f'quantization = "{quantization}" needs a CUDA GPU (bitsandbytes); '
                'set quantization = "none" to run on the CPU'
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise self._load_failed(
                f"quantization = \"{quantization}\" needs bitsandbytes: pip install 'tuwen[quant]'"
            ) from exc
        from transformers import BitsAndBytesConfig

        if quantization == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANT_SKIP_MODULES)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=QUANT_SKIP_MODULES,
        )

    def _load_processor(self, path: str, local: bool) -> Any:
        try:
            # Imported here: a broken torchvision makes this very import fail (FIELD-NOTES).
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(path, local_files_only=local)
            self.image_only_processor = False
            return processor
        except Exception as exc:
            vision_log.info("AutoProcessor unavailable (%s); using the image-only processor", _summary(exc))
        self.image_only_processor = True
        return image_only_processor(path, local)

    def _warm_up(self) -> None:
        started = time.monotonic()
        blank = Image.new("RGB", (64, 64), "white")
        try:
            self._run([single_image_request(blank, "hi", max_new_tokens=2, job_id="warm-up")])
        except TuwenError as exc:
            raise self._load_failed(f"warm-up failed: {exc.message.en}") from exc
        log.info("warm-up generate took %.2f s", time.monotonic() - started)

    def answer(self, request: Request) -> Answer:
        """Answer one request."""
        return self._run([request])[0]

    def stream(self, request: Request, on_text: OnText) -> Answer:
        """Answer one request, calling `on_text` with each new piece of visible text."""
        from transformers import TextIteratorStreamer

        self._check_loaded()
        streamer = TextIteratorStreamer(self._processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        visible = ReasoningFilter(self.settings.strip_thinking)
        cancel = threading.Event()
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                stop = until_set(cancel, self._cancel)
                outcome["answers"] = self._run([request], streamer=streamer, stopping_criteria=stop)
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc
                streamer.end()  # unblock the reader; generate() never reached its own end()

        # The generating thread logs as the caller does: with the caller's job context (`[job …]`).
        context = contextvars.copy_context()
        worker = threading.Thread(
            target=context.run, args=(generate,), name=f"generate-{request.job_id}", daemon=True
        )
        worker.start()
        try:
            for piece in streamer:
                if shown := visible.feed(piece):
                    on_text(shown)
        except BaseException:
            cancel.set()  # the reader has gone (a closed connection): stop spending GPU time on it
            worker.join()
            raise
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        if tail := visible.finish():
            on_text(tail)
        answer: Answer = outcome["answers"][0]
        return answer

    def batch(self, requests: Sequence[Request]) -> list[Answer]:
        """Answer several requests with left-padded batches; same order and results as single runs."""
        answers: dict[int, Answer] = {}
        # Sampling settings are per generate() call, so only requests asking for the same share one.
        groups: dict[tuple[float, object], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.temperature, request.options), []).append(index)
        size = self.settings.batch_size
        try:
            for indices in groups.values():
                for chunk in (indices[start : start + size] for start in range(0, len(indices), size)):
                    answers.update(zip(chunk, self._run([requests[i] for i in chunk]), strict=True))
        finally:
            self._release_cuda_cache()
        return [answers[i] for i in range(len(requests))]

    def cancel(self) -> None:
        """End the generation in hand at its next token (the worker's watchdog, for a stuck job)."""
        self._cancel.set()

    def close(self) -> None:
        """Free the model and processor (and the CUDA cache when on a GPU)."""
        self._model = None
        self._processor = None
        gc.collect()
        self._release_cuda_cache()

    def _check_loaded(self) -> None:
        if self._model is None or self._processor is None:
            raise PermanentError(msg("model_failed", reason="model is not loaded"))

    def _release_cuda_cache(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _conversation(self, request: Request) -> list[dict[str, Any]]:
        if not request.turns or request.turns[-1].role != "user":
            raise PermanentError(msg("model_failed", reason="the conversation must end with a user turn"))
        messages = []
        for turn in request.turns:
            images = turn.images if turn.role == "user" else ()
            content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
            messages.append({"role": turn.role, "content": [*content, {"type": "text", "text": turn.text}]})
        return messages

    def _prepare(self, requests: Sequence[Request]) -> Any:
        conversations = [self._conversation(r) for r in requests]
        # GLM-4.6V's template takes the reasoning switch (`batch` groups requests by their options).
        thinking = requests[0].options.thinking
        template_kwargs = {} if thinking is None else {"enable_thinking": thinking}
        started = time.monotonic()
        try:
            inputs = self._processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                # Lists, made tensors below: Glm4vProcessor feeds tensors to np.array (a numpy deprecation).
                return_tensors=None,
                # Converting composites RGBA/LA/P transparency onto white, as a viewer shows it.
                processor_kwargs={"padding": True, "do_convert_rgb": True},
                # Chat users must not be able to type `<|image|>` or role tokens into the prompt.
                sanitize_control_tokens=True,
                **template_kwargs,
            )
        except Exception as exc:
            reason = f"preparing the prompt: {_summary(exc)}"
            raise PermanentError(msg("model_failed", reason=reason)) from exc
        inputs = inputs.convert_to_tensors("pt")
        seconds = time.monotonic() - started
        merge = self._processor.image_processor.merge_size**2
        grids = iter(inputs["image_grid_thw"].tolist() if "image_grid_thw" in inputs else [])
        for request in requests:
            for image in (image for turn in request.turns if turn.role == "user" for image in turn.images):
                t, h, w = next(grids)
                vision_log.debug(
                    "%dx%d %s image -> %d visual tokens (prompt built in %.3f s)",
                    image.width,
                    image.height,
                    image.mode,
                    t * h * w // merge,
                    seconds,
                    extra=_tagged(request),
                )
        return inputs

    def _generate_kwargs(self, requests: Sequence[Request]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": max(self._max_new_tokens(r) for r in requests)}
        options = requests[0].options
        if (temperature := requests[0].temperature) > 0:
            kwargs.update(do_sample=True, temperature=temperature)
            if options.top_p is not None:
                kwargs["top_p"] = options.top_p
        else:
            # The checkpoint's generation_config samples by default; greedy must be asked for explicitly.
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if options.stop and len(requests) == 1:
            # transformers stops on strings only with the tokenizer at hand; batches share one setting.
            kwargs.update(stop_strings=list(options.stop), tokenizer=self._processor.tokenizer)
        if options.seed is not None and len(requests) == 1:
            import torch

            torch.manual_seed(options.seed)  # the one model thread owns torch's generator
        return kwargs

    def _max_new_tokens(self, request: Request) -> int:
        return min(request.max_new_tokens, self.settings.max_new_tokens)

    def _run(self, requests: Sequence[Request], **extra: Any) -> list[Answer]:
        """Generate for `requests` as one padded batch; maps failures onto the service's error kinds."""
        import torch

        self._check_loaded()
        job_ids = [r.job_id for r in requests]
        inputs = self._prepare(requests).to(self._model.device)
        prompt_width = inputs["input_ids"].shape[1]
        started = time.monotonic()
        extra.setdefault("stopping_criteria", until_set(self._cancel))
        try:
            with torch.inference_mode():
                output = self._model.generate(**inputs, **self._generate_kwargs(requests), **extra)
        except torch.cuda.OutOfMemoryError as exc:
            gen_log.warning("jobs %s: out of GPU memory with a batch of %d", job_ids, len(requests))
            del inputs
            self._release_cuda_cache()
            raise OutOfMemoryError(msg("model_oom")) from exc
        except Exception as exc:
            gen_log.exception("jobs %s: generation failed", job_ids)
            raise PermanentError(msg("model_failed", reason=_summary(exc))) from exc
        seconds = time.monotonic() - started
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        visual_tokens = (inputs["input_ids"] == self._model.config.image_token_id).sum(dim=1).tolist()
        answers = []
        for row, request, prompt, visual in zip(output, requests, prompt_tokens, visual_tokens, strict=True):
            new_ids = row[prompt_width:][: self._max_new_tokens(request)].tolist()
            # Stop at the first end-of-turn token; later ones are padding from rows that finished earlier.
            cut = next((i for i, token in enumerate(new_ids) if token in self._stop_ids), len(new_ids))
            raw = self._processor.tokenizer.decode(new_ids[:cut], skip_special_tokens=True)
            text, reasoning = split_reasoning(raw, self.settings.strip_thinking)
            finish = "length" if cut >= self._max_new_tokens(request) else "stop"
            answers.append(Answer(text, int(prompt), cut, reasoning, finish, {"visual_tokens": int(visual)}))
            gen_log.info(
                "%d prompt tokens (%d visual), %d new tokens in %.2f s (batch of %d)",
                prompt,
                visual,
                cut,
                seconds,
                len(requests),
                extra=_tagged(request),
            )
        return answers
