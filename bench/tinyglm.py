"""A tiny random GLM-4V checkpoint, built offline in a fraction of a second, for tests.

The folder has the same layout as the real `zai-org/GLM-4.6V-Flash` checkpoint (config.json tagged `glm4v`,
safetensors weights, tokenizer.json + tokenizer_config.json, chat_template.jinja, preprocessor_config.json
naming `Glm4vProcessor` / `Glm4vImageProcessor`, video_preprocessor_config.json, generation_config.json), so
the backend loads it through exactly the code path a real download takes. Only the sizes are tiny: text
64 hidden x 2 layers, vision 32 x 2, a ~600-token byte-level BPE. The weights are random, so answers are
gibberish, but they are deterministic gibberish.

The processor files are written by hand rather than by `Glm4vProcessor.save_pretrained`, because that
processor cannot be built without torchvision (its video processor needs it), and torchvision is not
installable beside CPU torch.
"""

from __future__ import annotations

import json
from pathlib import Path

# GLM's special tokens, in the order the real tokenizer has them (there they start at id 151329). The
# `<think>` pair is added as ordinary (non-special) tokens below, as in the real tokenizer, so that it
# survives `skip_special_tokens=True` decoding and the backend can strip the reasoning itself.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<|image|>",
    "<|video|>",
)
THINK_TOKENS = ("<think>", "</think>")
VOCAB_SIZE = 600

# A cut-down GLM-4.5V/4.6V chat template: `[gMASK]<sop>`, role tokens, one image placeholder per image
# item, and an assistant generation prompt (with an empty `<think></think>` when `enable_thinking` is false,
# as GLM-4.5V's template does). Earlier assistant turns are rendered without their reasoning.
CHAT_TEMPLATE = """[gMASK]<sop>
{%- macro text_of(content) -%}
{%- if content is string -%}{{ content }}{%- else -%}
{%- for item in content if item.type == 'text' -%}{{ item.text }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}<|system|>
{{ text_of(m.content) }}
{%- elif m.role == 'user' -%}<|user|>
{% if m.content is string -%}{{ m.content }}{%- else -%}
{%- for item in m.content -%}
{%- if item.type == 'image' or 'image' in item -%}<|begin_of_image|><|image|><|end_of_image|>
{%- elif item.type == 'video' or 'video' in item -%}<|begin_of_video|><|video|><|end_of_video|>
{%- elif item.type == 'text' -%}{{ item.text }}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- elif m.role == 'assistant' -%}<|assistant|>
{{ text_of(m.content).split('</think>')[-1].strip() }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|assistant|>
{% if enable_thinking is defined and not enable_thinking -%}<think></think>
{% endif -%}
{% endif -%}"""

_CORPUS = (
    "请用20字以内描述图中场景、人物和时间特征。",
    "这是一张扫描的旧照片，照片里有两个人站在门口。",
    "图片中有一只猫坐在窗台上，阳光很好。",
    "会议记录：今天下午三点在二楼会议室开会。",
    "发票号码、日期和金额都在右上角。",
    "Describe the scene, the people and the time of day in this image.",
    "This is a scanned receipt with a date, a total and a shop name.",
    "Two people are standing in front of an old house in the snow.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "What does the sign say? Please answer in one short sentence.",
    "A handwritten note on lined paper, dated March 1998.",
)


def _build_tokenizer_json(folder: Path) -> dict[str, int]:
    """Train the byte-level BPE, save tokenizer.json, return the ids of the special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(THINK_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus gives the trainer enough pair counts to fill the vocabulary; it is deterministic.
    tokenizer.train_from_iterator(list(_CORPUS) * 3, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = {"__size__": tokenizer.get_vocab_size(with_added_tokens=True)}
    for token in SPECIAL_TOKENS + THINK_TOKENS:
        token_id = tokenizer.token_to_id(token)
        assert token_id is not None, token
        ids[token] = token_id
    return ids


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_glm(folder: Path) -> Path:
    """Build a tiny random GLM-4V checkpoint in `folder` (created if needed) and return `folder`.

    Deterministic: the same transformers/tokenizers versions give byte-identical files.
    """
    import torch
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _build_tokenizer_json(folder)
    eos_ids = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]

    config = Glm4vConfig(
        text_config={
            "vocab_size": ids["__size__"],
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "pad_token_id": ids["<|endoftext|>"],
            # head_dim 32, half of it rotary -> 8 frequencies, split over (temporal, height, width).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [2, 3, 3],
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        # Like GLM-4.6V-Flash, the checkpoint's ids differ from Glm4vConfig's defaults.
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration(config).eval()
    # Random init leaves logits nearly flat; wider output weights make greedy decoding move between
    # tokens instead of repeating one, which is what streaming and batching tests need to see. A stronger
    # end-of-text row makes some prompts stop early, as a real model does, while others run to
    # max_new_tokens, so tests see both end-of-turn handling and padding inside a batch.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
        model.lm_head.weight[ids["<|endoftext|>"]] *= 2.0
    model.generation_config.update(
        # The real checkpoint samples by default; the backend must ask for greedy decoding explicitly.
        do_sample=True,
        temperature=0.8,
        top_p=0.6,
        top_k=2,
        eos_token_id=eos_ids,
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(folder)

    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "TokenizersBackend",
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "padding_side": "left",
            "model_max_length": 4096,
            "extra_special_tokens": list(SPECIAL_TOKENS[1:]),
            "processor_class": "Glm4vProcessor",
        },
    )
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    _write_json(
        folder / "preprocessor_config.json",
        {
            "image_processor_type": "Glm4vImageProcessor",
            "processor_class": "Glm4vProcessor",
            "do_rescale": True,
            "do_normalize": True,
            "image_mean": clip_mean,
            "image_std": clip_std,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
        },
    )
    _write_json(
        folder / "video_preprocessor_config.json",
        {
            "video_processor_type": "Glm4vVideoProcessor",
            "processor_class": "Glm4vProcessor",
            "image_mean": clip_mean,
            "image_std": clip_std,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
        },
    )
    return folder
