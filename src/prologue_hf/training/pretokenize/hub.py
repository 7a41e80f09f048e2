"""Publishing a pretokenized dataset on the Hugging Face Hub (loading one back is
:func:`~prologue_hf.training.pretokenize.info.load_pretokenized_dataset`)."""

from __future__ import annotations

import datasets

from .info import PRETOKENIZED_INFO_FILE, PretokenizedInfo


def push_pretokenized_to_hub(dataset: datasets.Dataset, repo_id: str, private: bool | None = None, **kwargs) -> None:
    """``dataset.push_to_hub`` plus the :class:`PretokenizedInfo` json (the Hub card does not keep the description)."""
    from huggingface_hub import HfApi

    info = PretokenizedInfo.from_dataset(dataset)
    if info is None:
        raise ValueError("dataset carries no PretokenizedInfo; load it with load_pretokenized_dataset")
    dataset.push_to_hub(repo_id, private=private, **kwargs)
    HfApi().upload_file(
        path_or_fileobj=info.to_json().encode(),
        path_in_repo=PRETOKENIZED_INFO_FILE,
        repo_id=repo_id,
        repo_type="dataset",
    )


__all__ = ["push_pretokenized_to_hub"]
