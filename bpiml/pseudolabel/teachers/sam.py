"""The SAM teacher: a frozen Segment Anything model prompted with each image's boxes.

Per call: images with boxes are resized to SAM's input (longest side `img_size`, 1024 for the
real variants), normalised, padded and encoded `batch_size` at a time; the mask decoder takes
one image embedding with many prompts, so it runs once per image with all of that image's
boxes (`multimask_output=False`). Each box mask is brought back to the original size and the
masks are OR-ed into one bool mask. Images without boxes never reach the encoder.

Confidence per box (`label`): the decoder's predicted IoU (`sam_pred_iou`, clipped to [0, 1]) times
the stability score (`sam_stability`: IoU of the full-size mask thresholded at logit +1 and at -1,
as SAM's automatic mask generator computes it; 0 when both are empty), so a box needs both a mask
SAM believes in and a mask whose edge does not move with the threshold.

Two paths over the same weights: the stock path (segment_anything's own preprocessing and
attention; the default on CPU) and the fast path in `sam_fast.py` (fused attention, bf16
autocast and on-device preprocessing on GPU; the default on CUDA).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import numpy as np
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.utils.amg import calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide

from bpiml.config import check_choice, check_range
from bpiml.data import cache
from bpiml.pseudolabel.teachers import sam_fast
from bpiml.pseudolabel.teachers import weights as sam_weights
from bpiml.pseudolabel.teachers.base import Labels, validate_batch
from bpiml.pseudolabel.teachers.tiny_sam import build_tiny_sam

logger = logging.getLogger(__name__)


def _registry_builder(variant: str) -> Callable[[], Sam]:
    return lambda: sam_model_registry[variant](checkpoint=None)


# variant -> builder of the architecture with random weights (weights are loaded by `load_sam`)
SAM_VARIANTS: dict[str, Callable[[], Sam]] = {
    "vit_b": _registry_builder("vit_b"),
    "vit_l": _registry_builder("vit_l"),
    "vit_h": _registry_builder("vit_h"),
    "tiny": build_tiny_sam,
}
_WIDTH_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 64: "tiny"}
MAX_PROMPTS_PER_PASS = 64  # boxes decoded together; bounds memory for images with many boxes
STABILITY_OFFSET = 1.0  # logit offset of the stability score (SAM's automatic mask generator's default)


def build_sam_architecture(variant: str) -> Sam:
    """The SAM architecture of `variant` with random weights (for benchmarks and loading)."""
    check_choice("variant", variant, SAM_VARIANTS)
    return SAM_VARIANTS[variant]()


def guess_variant(state: dict[str, torch.Tensor]) -> str | None:
    """The variant whose encoder width matches the checkpoint's patch embedding, or None."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    return None if weight is None else _WIDTH_TO_VARIANT.get(int(weight.shape[0]))


def _read_state(path: str, checkpoint: str) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch.save format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read SAM checkpoint {checkpoint}: {type(err).__name__}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"SAM checkpoint {checkpoint}: expected a state_dict, got {type(state).__name__}")
    return state


def load_sam(checkpoint: str, variant: str | None = None) -> tuple[Sam, str, str]:
    """Build the SAM a checkpoint holds and load its weights.

    checkpoint: `vit_b` / `vit_l` / `vit_h` (official weights, fetched once per node and verified),
    a local path or an s3:// URI. variant: None = from the name, else from the weights' shapes; a
    given variant that does not fit the weights is a ValueError naming both. Returns (model on CPU in
    eval mode, sha256 hex of the checkpoint file, variant).
    """
    try:
        path = sam_weights.local_checkpoint(checkpoint)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}") from err
    state = _read_state(path, checkpoint)
    guessed = guess_variant(state)
    if "image_encoder.patch_embed.proj.weight" not in state:
        raise ValueError(f"{checkpoint} is not a SAM checkpoint: no image_encoder.patch_embed.proj.weight")
    variant = variant or sam_weights.variant_of(checkpoint) or guessed
    if variant is None:
        raise ValueError(f"SAM checkpoint {checkpoint}: cannot tell its variant; pass --variant vit_b|vit_l|vit_h")
    check_choice("variant", variant, SAM_VARIANTS)
    sam = build_sam_architecture(variant)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first_lines = "; ".join(str(err).splitlines()[:4])
        hint = f"its encoder width suggests {guessed}" if guessed else "its encoder width matches no known variant"
        raise ValueError(f"SAM checkpoint {checkpoint} does not fit variant {variant!r} ({hint}): {first_lines}") from err
    return sam.eval(), cache.sha256_file(path), variant


class SamTeacher:
    """Box-prompted frozen SAM. Build with `build_sam_teacher` (checkpoint) or directly from a `Sam`.

    sam: the model (its weights are frozen here); variant and weights_id name it in `version`.
    device: "cpu", "cuda" or "cuda:N". fast: None = on for CUDA, off for CPU. compile: torch.compile
    the encoder. batch_size: images per encoder pass. gpu_preprocess: None = on with fast + CUDA.
    """

    name = "sam"

    def __init__(
        self,
        sam: Sam,
        *,
        variant: str,
        weights_id: str,
        device: str = "cpu",
        fast: bool | None = None,
        compile: bool = False,  # noqa: A002 - the interface's keyword
        batch_size: int = 4,
        gpu_preprocess: bool | None = None,
    ) -> None:
        check_range("batch_size", batch_size, 1)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for the SAM teacher, but CUDA is not available here")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        on_cuda = self.device.type == "cuda"
        self.fast = on_cuda if fast is None else bool(fast)
        self.gpu_preprocess = (self.fast and on_cuda) if gpu_preprocess is None else bool(gpu_preprocess)
        self.autocast = self.fast and on_cuda  # bf16 only where it pays; the CPU fast path stays fp32
        self.batch_size = int(batch_size)
        self.compiled = bool(compile)
        self.variant = variant
        self.version = f"sam-{variant}-{weights_id[:12]}-{'fast' if self.fast else 'stock'}"

        self.sam = sam.to(self.device).eval()
        for param in self.sam.parameters():
            param.requires_grad_(False)
        if self.fast:
            sam_fast.enable_fast_attention(self.sam.image_encoder)
        self.img_size = int(self.sam.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.img_size)
        self.encoder: Callable[[torch.Tensor], torch.Tensor] = self.sam.image_encoder
        if self.compiled:
            self.encoder = torch.compile(self.sam.image_encoder, dynamic=False)
        logger.info("SAM teacher %s on %s (batch %d, compile %s)", self.version, self.device, self.batch_size, compile)

    # --- steps -------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """HxWx3 uint8 -> (`3 x S x S` model input on the device, resized (h, w))."""
        if self.gpu_preprocess:
            return sam_fast.preprocess_on_device(image, self.img_size, self.sam.pixel_mean, self.sam.pixel_std)
        resized = self.transform.apply_image(image)  # PIL resize, as segment_anything
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous().float()
        return self.sam.preprocess(x), resized.shape[:2]

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """`B x 3 x S x S` model inputs -> `B x 256 x S/16 x S/16` image embeddings."""
        count = batch.shape[0]
        if self.compiled and count < self.batch_size:  # one static shape for the compiled encoder
            batch = torch.cat([batch, batch.new_zeros((self.batch_size - count, *batch.shape[1:]))])
        return self.encoder(batch)[:count]

    def decode(
        self, embedding: torch.Tensor, boxes: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One `1 x 256 x h x w` embedding + `Nx4` boxes -> (`H x W` bool union mask, `N` predicted IoUs,
        `N` stability scores), all on the device."""
        union = torch.zeros(original_size, dtype=torch.bool, device=self.device)
        prompts = self.transform.apply_boxes(boxes, original_size)  # ResizeLongestSide frame
        prompts = torch.as_tensor(prompts, dtype=torch.float32, device=self.device)
        dense_pe = self.sam.prompt_encoder.get_dense_pe()
        ious, stabilities = [], []
        for start in range(0, prompts.shape[0], MAX_PROMPTS_PER_PASS):
            chunk = prompts[start:start + MAX_PROMPTS_PER_PASS]
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=chunk, masks=None)
            low_res, iou_pred = self.sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks = self.sam.postprocess_masks(low_res.float(), input_size, original_size)  # N x 1 x H x W
            union |= (masks > self.sam.mask_threshold).any(dim=0)[0]
            stability = calculate_stability_score(masks[:, 0], self.sam.mask_threshold, STABILITY_OFFSET)
            stabilities.append(torch.nan_to_num(stability.float(), nan=0.0))  # both empty: no mask, no trust
            ious.append(iou_pred[:, 0].float().clamp(0.0, 1.0))
        return union, torch.cat(ious), torch.cat(stabilities)

    # --- Teacher -----------------------------------------------------------------------
    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        return [labels.mask for labels in self.label(images, boxes)]

    def label(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[Labels]:
        boxes = validate_batch(images, boxes)
        out = [_labels(np.zeros(image.shape[:2], dtype=bool), [], []) for image in images]
        todo = [i for i, image_boxes in enumerate(boxes) if len(image_boxes)]
        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                inputs = [self.preprocess(images[i]) for i in chunk]
                batch = torch.stack([x for x, _ in inputs])
                with self._autocast():
                    embeddings = self.encode(batch)
                    for j, i in enumerate(chunk):
                        union, ious, stability = self.decode(embeddings[j:j + 1], boxes[i], inputs[j][1],
                                                             images[i].shape[:2])
                        out[i] = _labels(union.cpu().numpy(), ious.cpu().tolist(), stability.cpu().tolist())
        return out


def _labels(mask: np.ndarray, pred_iou: list[float], stability: list[float]) -> Labels:
    """A SAM image's labels: box confidence = predicted IoU x stability (see the module doc)."""
    return Labels(mask, [iou * stab for iou, stab in zip(pred_iou, stability)],
                  {"sam_pred_iou": pred_iou, "sam_stability": stability})


def build_sam_teacher(
    *,
    checkpoint: str | None = None,
    variant: str | None = None,
    device: str = "cpu",
    fast: bool | None = None,
    compile: bool = False,  # noqa: A002
    batch_size: int = 4,
    gpu_preprocess: bool | None = None,
) -> SamTeacher:
    """Load `checkpoint` (name, local path or s3://; see `load_sam`) and wrap it as a teacher."""
    if not checkpoint:
        raise ValueError("the SAM teacher needs a checkpoint (vit_b | vit_l | vit_h, a path or s3:// URI)")
    sam, sha, variant = load_sam(checkpoint, variant)
    return SamTeacher(
        sam, variant=variant, weights_id=sha, device=device, fast=fast, compile=compile,
        batch_size=batch_size, gpu_preprocess=gpu_preprocess,
    )
