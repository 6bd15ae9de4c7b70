"""The data set registry, ``load_dataset`` and the CLI's ``--data NAME[:ARG]`` parser.

Built-in data sets: ``cifar10``, ``cifar100`` (torchvision, or a folder of ``{split}.npz``), ``npz`` (arrays
in a file or a folder of ``{split}.npz``), ``imagefolder`` (ImageFolder layout, loaded into memory) and
``synthetic`` (a learnable toy problem). A factory is called as ``factory(split, root=..., download=...,
**options)`` and returns :class:`~rkd.data.arrays.ImageArrays`; register more with ``@DATASETS.register``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rkd.data.arrays import ImageArrays
from rkd.data.cifar import load_cifar
from rkd.data.imagefolder import read_image_folder
from rkd.data.npz import read_npz
from rkd.data.synthetic import DEFAULT_SIZES, make_synthetic
from rkd.errors import DataError, UsageError
from rkd.registry import Registry, did_you_mean

SPLITS: tuple[str, ...] = ("train", "test")

DatasetFactory = Callable[..., ImageArrays]
DATASETS: Registry[DatasetFactory] = Registry("dataset")

# How the text after "NAME:" in --data is read: a path option, key=value options, or not at all.
_ARG_FORMS: dict[str, str] = {
    "cifar10": "none", "cifar100": "none", "npz": "path", "imagefolder": "path", "synthetic": "options",
}


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    download: bool = True,
    **options: Any,
) -> ImageArrays:
    """Load split ``split`` (``"train"`` or ``"test"``) of the registered data set ``name``.

    Args:
        name: a registered name (``DATASETS.names()``).
        split: ``"train"`` or ``"test"``.
        root: data folder for data sets that download (default ``$RKD_DATA_ROOT`` or ``~/.cache/rkd/data``);
            for ``npz``/``imagefolder`` it stands in for a missing ``path``.
        download: allow downloading (cifar10/cifar100).
        **options: the data set's own options (``path``, ``image_size``, ``n``, ...).

    Raises:
        UsageError: unknown name, split or option. DataError: the data cannot be found or read.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}; choose one of: train, test")
    factory = DATASETS.get(name)
    check_options(name, options)
    return factory(split, root=Path(root).expanduser() if root is not None else None, download=download,
                   **options)


def dataset_options(name: str) -> list[str]:
    """The option names data set ``name`` accepts (besides ``root`` and ``download``)."""
    params = inspect.signature(DATASETS.get(name)).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("root", "download")]


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise UsageError (with did-you-mean) for an option data set ``name`` does not take."""
    params = inspect.signature(DATASETS.get(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = dataset_options(name)
    for key in options:
        if key not in allowed:
            raise UsageError(
                f"dataset '{name}' has no option '{key}'{did_you_mean(key, allowed)}; "
                f"options: {', '.join(allowed) or 'none'}"
            )


def parse_data_arg(value: str) -> tuple[str, dict[str, Any]]:
    """Parse the CLI's ``--data`` value into ``(name, options)`` for :func:`load_dataset`.

    Forms: ``cifar10`` -> ``("cifar10", {})`` (its folder is ``--data-root``); ``npz:PATH`` and
    ``imagefolder:DIR`` -> ``{"path": ...}``; ``synthetic:n=512,num_classes=5`` -> integer/float options.

    Raises:
        UsageError: unknown name (with did-you-mean) or a malformed argument.
    """
    name, sep, rest = value.strip().partition(":")
    name = name.strip().lower()
    DATASETS.get(name)
    if not sep:
        return name, {}
    if not rest:
        raise UsageError(f"--data '{value}': nothing after ':' (write {name} or {name}:...)")
    form = _ARG_FORMS.get(name, "path")
    if form == "none":
        raise UsageError(
            f"--data '{value}': {name} takes nothing after ':'; give its folder with --data-root DIR"
        )
    if form == "path":
        return name, {"path": rest}
    options: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, text = (s.strip() for s in item.partition("="))
        if not eq or not key or not text:
            raise UsageError(f"--data '{value}': expected {name}:KEY=VALUE[,KEY=VALUE...], got '{item}'")
        options[key] = _number(text)
    check_options(name, options)
    return name, options


#: The data set of ``--data`` (verify), ``--parity-data`` (export) and ``--calib-data`` (quantize) when the model
#: records none (:func:`recorded_data`).
FALLBACK_DATASET = "cifar10"
# How many images a generated data set makes per split unless asked for more.
_GENERATED_SIZES: dict[str, dict[str, int]] = {"synthetic": DEFAULT_SIZES}


def recorded_data(
    record: Any, *, split: str, n: int | None = None, image_size: int | None = None
) -> tuple[str, dict[str, Any]] | None:
    """``(name, options)`` of the data set a model was trained on, as a bundle manifest's or a checkpoint's
    ``data`` section records it (``{"dataset": "synthetic", "options": {"num_classes": 5}}``); None without one.

    ``image_size`` (the side of the model's input) goes to a data set that resizes or generates its images; a
    generated one (``synthetic``) makes at least ``n`` images of ``split`` (and never fewer than it does by
    default, so the same images come back for any smaller ``n``).

    Raises:
        UsageError: a recorded data set or option this rkd does not know (pass the data explicitly).
    """
    name = record.get("dataset") if isinstance(record, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    if name not in DATASETS:
        raise UsageError(f"the model records data set '{name}', which this rkd does not know; pass --data")
    raw = record.get("options")
    options = {k: v for k, v in raw.items() if k != "n"} if isinstance(raw, Mapping) else {}
    takes = dataset_options(name)
    if image_size is not None and "image_size" in takes:
        options.setdefault("image_size", int(image_size))
    if name in _GENERATED_SIZES and "n" in takes:
        options["n"] = max(int(n or 0), _GENERATED_SIZES[name].get(split, 0))
    check_options(name, options)
    return name, options


def fit_to_model(
    name: str, options: Mapping[str, Any] | None, record: Any, *, input_size: int | None = None
) -> dict[str, Any]:
    """The options of an explicitly given data set ``name`` completed with how the model sees its images.

    For a data set decoded from files at a chosen size (``imagefolder``: it takes ``image_size`` and
    ``crop_ratio``), the model's input side comes from ``record`` (the ``data`` section a checkpoint's metadata
    or a bundle's manifest keeps, :func:`recorded_data`'s input) when it records one, else from ``input_size``
    (the side the model file declares); the evaluation crop is the recorded one when the model was trained on an
    image folder, else the default for that side (:func:`rkd.data.imagefolder.default_crop_ratio`). An option
    given in ``options`` always wins (``--input-size``). Other data sets' options come back unchanged. ``rkd
    eval``, ``rkd verify``, ``rkd quantize --calib-data`` and ``rkd export --parity-data`` all resolve their
    explicit data through this, as the recorded data does through :func:`recorded_data`.
    """
    from rkd.data.imagefolder import default_crop_ratio

    given = dict(options or {})
    takes = dataset_options(name) if name in DATASETS else []
    if "image_size" not in takes or "crop_ratio" not in takes:
        return given
    recorded = record.get("options") if isinstance(record, Mapping) else None
    recorded = recorded if isinstance(recorded, Mapping) else {}
    size = given.get("image_size", recorded.get("image_size", input_size))
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        return given
    filled: dict[str, Any] = {"image_size": size}
    if isinstance(record, Mapping) and record.get("dataset") == name:
        crop = recorded.get("crop_ratio")
    else:
        crop = default_crop_ratio(size)
    if crop is not None:
        filled["crop_ratio"] = crop
    return {**filled, **given}


def _number(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _path_or_root(name: str, path: str | Path | None, root: Path | None) -> Path:
    if path is None and root is None:
        raise UsageError(f"the {name} data set needs a path: --data {name}:PATH")
    return Path(path if path is not None else root).expanduser()  # type: ignore[arg-type]


@DATASETS.register("cifar10")
def cifar10(split: str, *, root: Path | None = None, download: bool = True) -> ImageArrays:
    """CIFAR-10 via torchvision (or ``root/{split}.npz``); see :func:`rkd.data.cifar.load_cifar`."""
    return load_cifar("cifar10", split, root=root, download=download)


@DATASETS.register("cifar100")
def cifar100(split: str, *, root: Path | None = None, download: bool = True) -> ImageArrays:
    """CIFAR-100 (fine labels) via torchvision (or ``root/{split}.npz``); see ``load_cifar``."""
    return load_cifar("cifar100", split, root=root, download=download)


def _factory(read: Callable[..., ImageArrays], *, path_of: str | None = None) -> DatasetFactory:
    """A data set factory around ``read``, taking ``root`` and ``download`` like every factory. With
    ``path_of`` (the data set's name) the data is read from a path: the factory takes a ``path`` option and calls
    ``read(PATH, split, **options)`` with ``path``, else ``root`` (:func:`_path_or_root`); without it nothing is
    read from disk and ``read(split, **options)`` is called. The factory's signature lists ``read``'s own
    keyword options (what :func:`dataset_options` reports)."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("split", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str"),
              inspect.Parameter("root", kw, default=None, annotation="Path | None"),
              inspect.Parameter("download", kw, default=True, annotation="bool")]
    if path_of is not None:
        params.append(inspect.Parameter("path", kw, default=None, annotation="str | Path | None"))
    params += [p for p in inspect.signature(read).parameters.values() if p.kind is kw]

    def factory(split: str, *, root: Path | None = None, download: bool = True, **options: Any) -> ImageArrays:
        if path_of is None:
            return read(split, **options)
        return read(_path_or_root(path_of, options.pop("path", None), root), split, **options)

    factory.__signature__ = inspect.Signature(params, return_annotation="ImageArrays")  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = path_of or read.__name__
    factory.__doc__ = read.__doc__
    return factory


def _read_npz(p: Path, split: str, *, num_classes: int | None = None) -> ImageArrays:
    """Arrays from ``path``: a ``.npz`` file (used for either split unless it holds ``x_{split}``), or a
    folder holding ``{split}.npz``; see :func:`rkd.data.npz.read_npz` for the validated format."""
    if p.is_dir():
        file = p / f"{split}.npz"
        if not file.is_file():
            found = ", ".join(sorted(f.name for f in p.glob("*.npz"))) or "no .npz files"
            raise DataError(f"{p} has no {split}.npz (found: {found})")
        p = file
    return read_npz(p, split=split, name="npz", num_classes=None if num_classes is None else int(num_classes))


def _read_imagefolder(p: Path, split: str, *, image_size: int = 32, crop_ratio: float | None = None) -> ImageArrays:
    """An ImageFolder-style tree loaded into memory at ``image_size``, with the evaluation transform
    (``crop_ratio``: resize + center crop, else a plain resize); see
    :func:`rkd.data.imagefolder.read_image_folder`. Training on large folders streams instead
    (:class:`rkd.data.stream.FolderImages`)."""
    return read_image_folder(p, split, image_size=image_size, crop_ratio=crop_ratio)


npz = DATASETS.register("npz")(_factory(_read_npz, path_of="npz"))
imagefolder = DATASETS.register("imagefolder")(_factory(_read_imagefolder, path_of="imagefolder"))
#: The learnable toy problem of :func:`rkd.data.synthetic.make_synthetic` (no files, no download).
synthetic = DATASETS.register("synthetic")(_factory(make_synthetic))
