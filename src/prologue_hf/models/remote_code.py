"""``trust_remote_code`` loading of saved Prologue folders in a process that never imported ``prologue_hf``.

``AutoModel.from_pretrained(folder)`` only knows the ``prologue_*`` model types once ``import prologue_hf`` has
registered them. For everyone else each saved ``config.json`` carries an ``auto_map`` and the folder one-line module
files that import the classes from the *installed* package (copying the library's own files would not work: their
relative imports fail outside the package). ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` then
resolves the same classes; after ``import prologue_hf`` the registered classes take precedence and no
``trust_remote_code`` is needed.
"""

from __future__ import annotations

import os

# model_type -> {module file stem: (package module, [class names])}, and the auto classes mapped onto those classes
_MODULES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "prologue_ar": {
        "configuration_prologue_ar": ("prologue_hf.models.configuration_prologue_ar", ["PrologueARConfig"]),
        "modeling_prologue_ar": (
            "prologue_hf.models.modeling_prologue_ar", ["PrologueARModel", "PrologueARForCausalLM"]
        ),
    },
    "prologue_tokenizer": {
        "configuration_prologue_tokenizer": (
            "prologue_hf.models.configuration_prologue_tokenizer", ["PrologueTokenizerConfig"]
        ),
        "modeling_prologue_tokenizer": ("prologue_hf.models.modeling_prologue_tokenizer", ["PrologueTokenizerModel"]),
    },
    "prologue_post": {
        "configuration_prologue_post": ("prologue_hf.models.configuration_prologue_post", ["ProloguePostConfig"]),
        "modeling_prologue_post": ("prologue_hf.models.modeling_prologue_post", ["ProloguePostModel"]),
    },
    "prologue_discriminator": {
        "discriminator": ("prologue_hf.models.discriminator", ["PrologueDiscriminatorConfig", "PrologueDiscriminator"]),
    },
}
_AUTO_MAP: dict[str, dict[str, str]] = {
    "prologue_ar": {
        "AutoConfig": "configuration_prologue_ar.PrologueARConfig",
        "AutoModel": "modeling_prologue_ar.PrologueARModel",
        "AutoModelForCausalLM": "modeling_prologue_ar.PrologueARForCausalLM",
    },
    "prologue_tokenizer": {
        "AutoConfig": "configuration_prologue_tokenizer.PrologueTokenizerConfig",
        "AutoModel": "modeling_prologue_tokenizer.PrologueTokenizerModel",
    },
    "prologue_post": {
        "AutoConfig": "configuration_prologue_post.ProloguePostConfig",
        "AutoModel": "modeling_prologue_post.ProloguePostModel",
    },
    "prologue_discriminator": {
        "AutoConfig": "discriminator.PrologueDiscriminatorConfig",
        "AutoModel": "discriminator.PrologueDiscriminator",
    },
}


def remote_code_auto_map(model_type: str) -> dict[str, str]:
    """The ``auto_map`` written into a saved ``config.json`` of ``model_type``.

    >>> remote_code_auto_map("prologue_ar")["AutoModelForCausalLM"]
    'modeling_prologue_ar.PrologueARForCausalLM'
    """
    if model_type not in _AUTO_MAP:
        raise ValueError(f"model_type must be one of {sorted(_AUTO_MAP)}, got {model_type!r}")
    return dict(_AUTO_MAP[model_type])


def write_remote_code(save_directory: str | os.PathLike, model_type: str) -> list[str]:
    """Write the one-line module files ``auto_map`` names for ``model_type`` into ``save_directory``; returns their
    paths. Each imports from the installed package, e.g. ``modeling_prologue_ar.py``::

        from prologue_hf.models.modeling_prologue_ar import PrologueARModel, PrologueARForCausalLM  # noqa: F401
    """
    if model_type not in _MODULES:
        raise ValueError(f"model_type must be one of {sorted(_MODULES)}, got {model_type!r}")
    os.makedirs(save_directory, exist_ok=True)
    paths = []
    for stem, (module, names) in _MODULES[model_type].items():
        path = os.path.join(save_directory, f"{stem}.py")
        with open(path, "w") as f:
            f.write(f"from {module} import {', '.join(names)}  # noqa: F401\n")
        paths.append(path)
    return paths


class RemoteCodeConfigMixin:
    """Config mixin: ``save_pretrained`` also writes the ``auto_map`` and its module files (a model's
    ``save_pretrained`` saves its config through this, after anything transformers itself copies there)."""

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        write_remote_code(save_directory, self.model_type)
        previous = getattr(self, "auto_map", None)
        self.auto_map = remote_code_auto_map(self.model_type)
        try:
            super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if previous is None:
                del self.auto_map
            else:
                self.auto_map = previous


__all__ = ["RemoteCodeConfigMixin", "remote_code_auto_map", "write_remote_code"]
