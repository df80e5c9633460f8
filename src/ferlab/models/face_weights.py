"""The key layouts of the face-recognition weight files that FER papers publish, mapped to ferlab's modules.

Every file goes through `pretrained.read_state_dict` first (weights under `state_dict`/`model_state_dict`/`model`/
`net`, a `module.` or `_orig_mod.` prefix on every key, a whole pickled model refused in one line); then:

- MS-Celeb-1M ResNet-18 (`resnet18_msceleb.pth` of SCN, DAN, EAC's ResNet-18 runs, RUL; first published with
  amirhfarzaneh/dacl): `{"state_dict": torchvision resnet18 keys}` (DAN loads it strictly into torchvision's
  resnet18; SCN's copy has `module.` keys). `resnet.resnet18` reads it with `pretrained.resnet_names`; its `fc`
  (the face-identity classifier) becomes the head, re-initialised when the class count differs.
- IR-50/100/152 (`ir_names`): TreB1eN/InsightFace_Pytorch's `model_ir_se50.pth` / `model_ir50.pth` and POSTER's
  `ir50.pth`: `input_layer.*`, `body.<i>.shortcut_layer|res_layer.*`, `output_layer.*` (no classifier: the
  ArcFace head is a separate file); POSTER++ (POSTER_V2) splits the body as `body1`/`body2`/`body3`.
- MobileFaceNet (`mobilefacenet_names`): InsightFace_Pytorch's `model_mobilefacenet.pth` (`conv1` ... `conv_6_sep`,
  then the GDC head `conv_6_dw`, `linear`, `bn`) and POSTER's `mobilefacenet_model_best.pth.tar` (the same body,
  the GDC head under `output_layer.`, 136 wide).
- timm files (`timm_state_dict`): a classifier saved as `nn.Sequential(nn.Linear)` (hsemotion's `classifier.0.*`)
  becomes timm's `classifier.*`; the file's class count (0 without a classifier, as hsemotion's VGGFace2
  `state_vggface2_enet*.pt`) tells timm whether to keep it.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

# InsightFace_Pytorch's MobileFaceNet body, in order (ferlab keeps them under `body.`)
MFN_BODY = ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5", "conv_6_sep")
MFN_GDC = (("conv_6_dw.", "neck.0."), ("linear.", "neck.2."), ("bn.", "neck.3."))  # GDC module -> ferlab neck


def ir_names(net: nn.Module) -> list[tuple[str, str | None]]:
    """insightface IR keys -> IRNet: input_layer -> stem, output_layer -> neck, body.<i> (or POSTER++'s
    body<s>.<j>) -> body.<i>; units of stages this net does not keep (num_stages < 4) are dropped."""
    units, kept = net.layout_units, len(net.body)
    pairs: list[tuple[str, str | None]] = [("input_layer.", "stem."), ("output_layer.", "neck.")]
    start = 0
    for stage, n in enumerate(units, 1):
        for j in range(n):
            flat = start + j
            pairs.append((f"body{stage}.{j}.", f"body.{flat}." if flat < kept else None))
            if flat >= kept:
                pairs.append((f"body.{flat}.", None))
        start += n
    return pairs


def mobilefacenet_names(net: nn.Module) -> list[tuple[str, str | None]]:
    """InsightFace_Pytorch MobileFaceNet keys -> ferlab's: body modules under `body.`, the GDC head (top level, or
    under POSTER's `output_layer.`) -> `neck.`."""
    gdc = [(f"output_layer.{old}", new) for old, new in MFN_GDC] + list(MFN_GDC)
    return [*gdc, *[(f"{name}.", f"body.{name}.") for name in MFN_BODY]]


def timm_state_dict(state: Mapping[str, Tensor], classifier: str) -> tuple[dict[str, Tensor], int]:
    """(state dict in timm's names, the file's class count: rows of `classifier`, 0 when it has none).

    `classifier` is timm's name for the model's linear classifier (pretrained_cfg["classifier"], e.g. "classifier",
    "head.fc"); a `<classifier>.0.weight` (a Sequential holding one Linear) is renamed to `<classifier>.weight`."""
    wrapped = f"{classifier}.0."
    out = {(f"{classifier}.{k[len(wrapped):]}" if k.startswith(wrapped) else k): v for k, v in state.items()}
    weight = out.get(f"{classifier}.weight")
    return out, int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 0
