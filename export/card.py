"""The model card: what an exported synthesizer needs to be used correctly, stored inside the ONNX file.

Written as JSON under the ``metadata_props`` key :data:`CARD_KEY` (plus a few flat keys that model
viewers such as Netron show) and read back by the runtime, so an ``.onnx`` file is self-describing:
which contrasts go in and in what channel order, what comes out, how the inputs must be normalized
(the :mod:`data_prep.preprocess` recipe with these percentiles and crop margin), the window size it
was trained on and its stride. json/dataclasses only: imported by the torch-free runtime.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from data_prep.config import ConfigError, FrozenConfig, require
from data_prep.errors import UserError
from data_prep.preprocess import DEFAULT_MARGIN, DEFAULT_PERCENTILES
from data_prep.schema import CONTRASTS, canonical_contrast

log = logging.getLogger(__name__)

CARD_KEY = "cclray.card"
CARD_VERSION = 2  # 2: spacing (the training grid's voxel size); source_run is a run name, not a path
INPUT_NAME = "image"
OUTPUT_NAME = "synthesis"
# fp32; fp16 weights (float32 compute); int8: static QDQ quantization (export.quantize)
PRECISIONS = ("fp32", "fp16", "int8")


def package_version() -> str:
    """The installed cclray distribution's version (from its metadata: the runtime imports no ``cclray``)."""
    try:
        return importlib.metadata.version("cclray")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


class CardError(UserError, ValueError):
    """The ONNX file has no (or an unusable) cclray model card; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class ModelCard(FrozenConfig):
    """Everything the runtime must know to reproduce the training-time pipeline.

    Channel order of the network input is ``inputs``; of its output, ``targets``. Outputs are in the
    z-scored units of the training targets (per-subject z-score inside the brain), not scanner units.
    """

    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    patch_size: tuple[int, int, int]  # training window (an int means a cube)
    stride: int
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    crop_margin: int = DEFAULT_MARGIN
    overlap: float = 0.5
    normalization: str = "brain mask = any input non-zero; clip to percentiles inside mask; z-score inside mask; 0 outside"
    output_units: str = "z-score (per-subject, inside the brain) of the training targets"
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    precision: str = "fp32"
    # voxel size (mm, per array axis) of the grid the model was trained on: the store's ``spacing``.
    # The runtime resamples inputs on another grid to it (and outputs back). None: unknown (card v1).
    spacing: tuple[float, float, float] | None = None
    opset: int = 18
    config_hash: str = ""
    source_run: str = ""
    export_date: str = ""
    cclray_version: str = ""
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, (int, float)) and not isinstance(self.patch_size, bool):
            object.__setattr__(self, "patch_size", (int(self.patch_size),) * 3)
        if isinstance(self.spacing, (int, float)) and not isinstance(self.spacing, bool):
            object.__setattr__(self, "spacing", (float(self.spacing),) * 3)
        super().__post_init__()

    def validate(self) -> None:
        for key in ("inputs", "targets"):
            names = getattr(self, key)
            require(len(names) > 0, f"card {key} is empty: list the contrasts, e.g. {list(CONTRASTS[:2])}")
            try:
                canon = tuple(canonical_contrast(c) for c in names)
            except ValueError as e:
                raise ConfigError(f"card {key}: {e}") from None
            require(canon == names, f"card {key} {list(names)} must use canonical names {list(CONTRASTS)}")
            require(len(set(names)) == len(names), f"card {key} {list(names)} has duplicates")
        require(self.stride > 0 and all(p > 0 and p % self.stride == 0 for p in self.patch_size),
                f"card patch_size {list(self.patch_size)} must be positive multiples of stride {self.stride}")
        require(0.0 <= self.overlap < 1.0, f"card overlap {self.overlap} must be in [0, 1)")
        lo, hi = self.percentiles
        require(0.0 <= lo < hi <= 100.0, f"card percentiles {self.percentiles} must satisfy 0 <= lo < hi <= 100")
        require(self.crop_margin >= 0, f"card crop_margin {self.crop_margin} must be >= 0")
        require(self.precision in PRECISIONS, f"card precision {self.precision!r} must be one of {list(PRECISIONS)}")
        require(self.spacing is None or (len(self.spacing) == 3 and all(0 < v < 100 for v in self.spacing)),
                f"card spacing {self.spacing} must be three voxel sizes in mm (or null: unknown)")

    @classmethod
    def new(cls, **fields: Any) -> "ModelCard":
        """A card stamped with today's date and this cclray version (unless given)."""
        fields.setdefault("export_date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        fields.setdefault("cclray_version", package_version())
        return cls.from_dict(fields)

    def metadata_props(self) -> dict[str, str]:
        """``{key: str}`` for ONNX ``metadata_props``: the card as JSON plus flat keys for viewers."""
        return {
            CARD_KEY: self.to_json(),
            "cclray.inputs": ",".join(self.inputs),
            "cclray.targets": ",".join(self.targets),
            "cclray.version": self.cclray_version,
        }

    def require_inputs(self, given) -> None:
        """Raise :class:`CardError` unless ``given`` contrasts are exactly the card's inputs."""
        given = [canonical_contrast(c) for c in given]
        missing = [c for c in self.inputs if c not in given]
        extra = [c for c in given if c not in self.inputs]
        if missing or extra:
            raise CardError(
                f"this model takes {list(self.inputs)} (in that order); got {given}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not used by the model: {extra}" if extra else "")
                + ": pass exactly the model's input contrasts"
            )


def card_from_metadata(meta: dict[str, str], where: str = "the model") -> ModelCard:
    """Parse the card from a ``metadata_props`` mapping, or raise :class:`CardError` saying why."""
    if CARD_KEY not in meta:
        raise CardError(
            f"{where} has no cclray model card (metadata key {CARD_KEY!r} missing; found "
            f"{sorted(meta) or 'no metadata'}): export it with `cclray export`, which writes the card"
        )
    try:
        data = json.loads(meta[CARD_KEY])
    except json.JSONDecodeError as e:
        raise CardError(f"{where}: the cclray card is not valid JSON ({e}): re-export the model") from None
    if not isinstance(data, dict):
        raise CardError(f"{where}: the cclray card is not a JSON object: re-export the model")
    if int(data.get("card_version", CARD_VERSION)) > CARD_VERSION:
        raise CardError(f"{where} has card version {data['card_version']} (this cclray reads "
                        f"<= {CARD_VERSION}): upgrade cclray on this host")
    known = {f.name for f in dataclasses.fields(ModelCard)}
    unknown = sorted(set(data) - known)
    if unknown:
        log.warning("%s: ignoring unknown card keys %s (card written by a newer cclray?)", where, unknown)
    try:
        return ModelCard.from_dict({k: v for k, v in data.items() if k in known})
    except (ConfigError, TypeError) as e:
        raise CardError(f"{where}: unusable cclray card: {e}; re-export the model with `cclray export`") from None


def read_card(model: Any) -> ModelCard:
    """The card of an ONNX model: a path, an ``onnxruntime.InferenceSession`` or an ``onnx.ModelProto``."""
    if hasattr(model, "get_modelmeta"):  # onnxruntime session
        return card_from_metadata(dict(model.get_modelmeta().custom_metadata_map), "the session's model")
    if hasattr(model, "metadata_props"):  # onnx.ModelProto
        return card_from_metadata({p.key: p.value for p in model.metadata_props}, "the ONNX model")
    path = Path(model)
    if not path.is_file():
        raise CardError(f"no ONNX model at {path}: pass the .onnx file written by `cclray export`")
    try:
        import onnx  # lighter than a session; optional on inference hosts
    except ImportError:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return card_from_metadata(dict(sess.get_modelmeta().custom_metadata_map), str(path))
    proto = onnx.load(str(path), load_external_data=False)
    return card_from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
