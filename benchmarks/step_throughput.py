"""Training-step throughput of every recipe family, unveil beside the references, in one process.

Families (``--families``):

    mae-image   MAE Hiera (``--size``, default base) at 224: unveil, official ``hiera-transformer``, and the
                official model patched by ``hiera_optim.optimize`` (when the ``hiera-optim`` package imports)
    mae-video   the same at 16x224 (video MAE, mask ratio 0.9)
    mavil-1     MAViL stage 1 (``MAViLPretrainModule.compute_losses``: reconstruction + contrastive terms)
    mavil-2     MAViL stage 2 (``MAViLSelfTrainModule.compute_losses``: frozen-teacher targets + student)

More families (HieraDet detection, SAM 2) plug in with :func:`register_family`: a function that takes the parsed
arguments and the device and returns a :class:`Family` of :class:`Impl` steps; everything else (alternating
timing, FLOP counting, memory, dtypes, loader lines) applies to them unchanged.

Every implementation of a family gets the same weights, batch and mask. They are timed in the same process,
alternating over ``--rounds`` rounds (the order flips every round) and each keeps its best round, so that a
load that comes and goes hits all alike. Printed per implementation: samples/s, the ratio to the family's
first reference (official eager), FLOPs per step (torch's FlopCounterMode on the eager forward + backward),
achieved FLOP/s as a fraction of a large matmul's measured in the same run and dtype, and memory: on CUDA the
peak allocated over the timed steps, on the CPU the bytes autograd saves for backward in one eager step (the
activation memory; not measured for compiled steps).

``--compile`` adds compiled (``torch.compile``, static shapes) variants: unveil's ``compile: true`` path (the
model with kept-unit indices drawn outside the graph) and, with ``--compile-references``, the official model
compiled as is and ``hiera_optim.optimize(graph_safe=True)`` compiled. Compilation happens in the warm-up and is
reported apart.

Precision: fp32 on the CPU; on CUDA ``--dtypes fp32 bf16 fp16`` (autocast, fp32 master weights, a GradScaler
for fp16). The official README's A100 fp16 figures (the paper's speed measurements; inference, not a training
step) are printed beside the same model for scale.

``--loader`` adds, per family, the training loader's samples/s per worker (a DataModule of the recipe's kind on
generated data, ``benchmarks/loader_throughput.py``) next to the step's consumption, and for video the decode
workers needed at the measured step rate from 320p shards and from raw 720p videos.

    python benchmarks/step_throughput.py [--families mae-image mae-video mavil-1 mavil-2] [--size base]
        [--batch 8] [--video-batch 2] [--mavil-size base] [--mavil-batch 2] [--steps 3] [--rounds 3]
        [--compile] [--compile-references] [--dtypes fp32] [--device auto] [--loader]

Needs the ``bench`` extra (``pip install -e ".[bench]"``: hiera-transformer, hiera-optim). Runs unchanged on a
CUDA machine (``--device auto`` picks CUDA when there is one).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import unveil.models as unveil_models
from unveil.models.hiera import unit_indices
from unveil.pretrain.optim import adamw, implementation

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The official README's "A100 fp16 Speed" column (im/s, clip/s): inference, without SDPA (see its note).
OFFICIAL_A100_FP16 = {
    "tiny_224": 2758, "small_224": 2211, "base_224": 1556, "base_plus_224": 1247, "large_224": 531, "huge_224": 274,
    "base_16x224": 133.6, "base_plus_16x224": 84.1, "large_16x224": 40.8, "huge_16x224": 20.9,
}


# ------------------------------------------------------------------------------------------ building blocks


@dataclass
class Impl:
    """One implementation of a family's training step.

    loss: runs the forward on the fixed batch and returns the loss (autocast is applied around it).
    optimizer: steps the parameters ``loss`` trains.
    flops_of: the eager module whose forward + backward FLOPs stand for this step (None: count ``loss`` itself).
    compiled: whether ``loss`` runs a compiled graph (its warm-up compiles; its memory is not measured on CPU).
    """

    name: str
    loss: Callable[[], torch.Tensor]
    optimizer: torch.optim.Optimizer
    compiled: bool = False
    flops: int = 0
    best: float = math.inf
    memory: float | None = None
    compile_seconds: float | None = None
    scaler: torch.amp.GradScaler | None = None


@dataclass
class Family:
    name: str
    samples_per_step: int
    impls: list[Impl]
    modality: str | None = None  # loader_throughput.py's modality of the recipe's data
    reference_rate: tuple[str, float] | None = None  # (what, samples/s) printed beside the table
    notes: list[str] = field(default_factory=list)


FAMILIES: dict[str, Callable[[argparse.Namespace, torch.device], Family]] = {}


def register_family(name: str):
    """Decorator: ``@register_family("detection") def build(args, device) -> Family``."""

    def add(build):
        FAMILIES[name] = build
        return build

    return add


def official_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hiera
    return hiera


def hiera_optim_or_none():
    """``hiera_optim.optimize``, or None when the package does not import.

    hiera-optim 0.2.1 looks for the official classes under ``hiera.hiera`` (``MaskedAutoencoderHiera``,
    ``apply_fusion_head``), where its in-tree copy keeps them; the PyPI ``hiera-transformer`` has them in
    ``hiera.hiera_mae``. We hand it those symbols through its adapter's own record, and the
    ``_grad_checkpointing`` attribute its patched forward reads; nothing of its math is touched.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import hiera.hiera as hh
            import hiera.hiera_mae as hm
            import hiera.hiera_utils as hu
            import hiera_optim
            from hiera_optim.adapters import hiera as adapter
    except Exception as error:  # noqa: BLE001 - any import failure means "not available here"
        print(f"hiera-optim: not available ({type(error).__name__}: {error}); skipped")
        return None
    if adapter._SYMS is None:
        adapter._SYMS = adapter._HieraSymbols(
            Hiera=hh.Hiera, MaskedAutoencoderHiera=hm.MaskedAutoencoderHiera, HieraBlock=hh.HieraBlock,
            MaskUnitAttention=hh.MaskUnitAttention, apply_fusion_head=hm.apply_fusion_head,
            undo_windowing=hu.undo_windowing,
        )

    def optimize(model, **kwargs):
        model._grad_checkpointing = False
        with contextlib.redirect_stdout(None):
            return hiera_optim.optimize(model, **kwargs)

    return optimize


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_sec(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(impl: Impl, device: torch.device, dtype: torch.dtype) -> None:
    with autocast(device, dtype):
        loss = impl.loss()
    impl.optimizer.zero_grad(set_to_none=True)
    if impl.scaler is not None:
        impl.scaler.scale(loss).backward()
        impl.scaler.step(impl.optimizer)
        impl.scaler.update()
    else:
        loss.backward()
        impl.optimizer.step()


def count_flops(impl: Impl, device: torch.device, dtype: torch.dtype) -> int:
    counter = FlopCounterMode(display=False)
    with counter, autocast(device, dtype):
        impl.loss().backward()
    impl.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def saved_activation_bytes(impl: Impl, device: torch.device, dtype: torch.dtype) -> int:
    """Bytes autograd keeps for backward in one forward (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        loss = impl.loss()
    loss.backward()
    impl.optimizer.zero_grad(set_to_none=True)
    return sum(storages.values())


def time_steps(impl: Impl, steps: int, device: torch.device, dtype: torch.dtype) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(impl, device, dtype)
    synchronize(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ families


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(model, dynamic=False)


def mae_family(args, device: torch.device, video: bool) -> Family:
    suffix = "16x224" if video else "224"
    name = f"mae_hiera_{args.size}_{suffix}"
    torch.manual_seed(0)
    official = getattr(official_module(), name)(pretrained=False).to(device).train()
    ours = getattr(unveil_models, name)().to(device).train()
    ours.load_state_dict(official.state_dict())
    batch = args.video_batch if video else args.batch
    x = torch.randn(batch, 3, *((16, 224, 224) if video else (224, 224)), device=device)
    mask = ours.get_random_mask(x, ours.mask_ratio)  # both models: the same kept units
    kept = unit_indices(mask)  # what the training step hands the model (drawn outside any compiled graph)
    ours_optimizer = adamw(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    official_optimizer = torch.optim.AdamW(official.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    impls = [
        Impl("official eager", lambda: official(x, mask=mask)[0], official_optimizer),
        Impl("unveil eager", lambda: ours(x, mask=kept).loss, ours_optimizer),
    ]
    optimize = hiera_optim_or_none()
    patched = None
    if optimize is not None:
        patched = copy.deepcopy(official)
        optimize(patched)
        patched_optimizer = torch.optim.AdamW(patched.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        impls.append(Impl("official+hiera_optim eager", lambda: patched(x, mask=mask)[0], patched_optimizer))
    if args.compile:
        # the same module and optimiser as the eager step: only the speed of the step is measured
        compiled = _compiled(ours)
        impls.append(Impl("unveil compile", lambda: compiled(x, mask=kept).loss, ours_optimizer, compiled=True))
        if args.compile_references:
            compiled_official = _compiled(official)
            impls.append(Impl("official compile", lambda: compiled_official(x, mask=mask)[0], official_optimizer,
                              compiled=True))
            if optimize is not None:
                safe = copy.deepcopy(official)
                optimize(safe, graph_safe=True)
                compiled_safe = _compiled(safe)
                safe_optimizer = torch.optim.AdamW(safe.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
                impls.append(Impl("official+hiera_optim(graph_safe) compile",
                                  lambda: compiled_safe(x, mask=mask)[0], safe_optimizer, compiled=True))
    reference = OFFICIAL_A100_FP16.get(f"{args.size}_{suffix}")
    what = f"official README, Hiera-{args.size} {suffix}, A100 fp16 inference"
    return Family(
        name=f"{name} (batch {batch})", samples_per_step=batch, impls=impls, modality="video" if video else "image",
        reference_rate=(what, reference) if reference else None,
        notes=[f"optimiser: unveil {implementation(ours_optimizer)} AdamW (pretrain.optim.adamw); "
               f"official: torch.optim.AdamW defaults ({implementation(official_optimizer)})"],
    )


@register_family("mae-image")
def mae_image(args, device):
    return mae_family(args, device, video=False)


@register_family("mae-video")
def mae_video(args, device):
    return mae_family(args, device, video=True)


def _mavil_batch(model, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    config = model.config
    frames, mel = config["audio_size"]
    size = config["image_size"]
    return {"fbank": torch.randn(batch, 1, frames, mel, device=device),
            "video": torch.randn(batch, 3, config["num_frames"], size, size, device=device)}


def mavil_family(args, device: torch.device, stage: int) -> Family:
    from unveil.models.mavil import MAViL
    from unveil.pretrain.mavil import MAViLPretrainModule, MAViLSelfTrainModule

    factory = getattr(unveil_models.mavil, f"mavil_vit_{args.mavil_size}_patch16")
    torch.manual_seed(0)
    modules = {}
    for compile in (False, True) if args.compile else (False,):
        if stage == 1:
            module = MAViLPretrainModule(factory(), compile=compile)
        else:
            teacher = factory()
            path = Path(tempfile.mkdtemp()) / "teacher.pt"
            torch.save(teacher.state_dict(), path)
            student = MAViL(**{**teacher.config, "target_dim": teacher.embed_dim})
            module = MAViLSelfTrainModule(student, teacher_checkpoint=str(path), teacher=teacher, compile=compile)
        modules[compile] = module.to(device).train()
    if args.compile:
        modules[True].model.load_state_dict(modules[False].model.state_dict())
    batch = _mavil_batch(modules[False].model, args.mavil_batch, device)
    impls = []
    for compile, module in modules.items():
        optimizer = adamw(module.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
        impls.append(Impl(f"unveil {'compile' if compile else 'eager'}",
                          lambda module=module: module.compute_losses(batch)["loss"], optimizer, compiled=compile))
    what = "reconstruction + contrastive" if stage == 1 else "teacher targets + student reconstruction"
    return Family(
        name=f"MAViL stage {stage}, ViT-{args.mavil_size} ({what}, batch {args.mavil_batch})",
        samples_per_step=args.mavil_batch, impls=impls, modality="audio-video",
        notes=["no official MAViL implementation is packaged; unveil eager is the reference"],
    )


@register_family("mavil-1")
def mavil_1(args, device):
    return mavil_family(args, device, stage=1)


@register_family("mavil-2")
def mavil_2(args, device):
    return mavil_family(args, device, stage=2)


# ------------------------------------------------------------------------------------------ loader lines


def loader_module():
    """``benchmarks/loader_throughput.py``, imported by path (benchmarks/ is not a package)."""
    path = Path(__file__).with_name("loader_throughput.py")
    spec = importlib.util.spec_from_file_location("loader_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loader_per_worker(modality: str, root: Path, batches: int) -> float:
    """Samples/s of one loading process (0 workers: the main process loads) for the recipe's training data."""
    loaders = loader_module()
    setups = loaders.generate(root, [modality])
    setup = setups[modality]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        return loaders.loader_rate(setup["class"](**setup["folder"], **setup["args"], loader={"num_workers": 0, "pin_memory": False}), batches)
    finally:
        torch.set_num_threads(threads)


def video_decode_rates(root: Path, batches: int) -> dict[str, float]:
    """Clips/s of one loading process for 16x224 clips from 320p shards and from raw 720p videos."""
    from unveil.datasets import ShardOptions, VideoDataModule
    from unveil.datasets.shards import make_shards
    from unveil.datasets.synth import make_video_folder

    loaders = loader_module()
    args = {"input_size": 224, "num_frames": 16, "sampling_rate": 4, "batch_size": 2, "val_split": None,
            "loader": {"pin_memory": False, "num_workers": 0}}
    rates = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for label, size in (("320p shards", 320), ("720p raw", 720)):
            folder = root / f"video{size}"
            if not (folder / "train").is_dir():
                make_video_folder(folder, num_classes=2, train_per_class=3, val_per_class=0, num_frames=64, fps=16,
                                  size=size, progress=False)
            if "shards" in label:
                shards = make_shards("videos", root / f"shards{size}", folder, max_count=6, progress=False)
                options = ShardOptions(resampled=True, epoch_samples=10**6)
                data = VideoDataModule(shards=str(shards), shard_options=options, **args)
            else:
                data = VideoDataModule(root=str(folder), **args)
            rates[label] = loaders.loader_rate(data, batches)
    finally:
        torch.set_num_threads(threads)
    return rates


# ------------------------------------------------------------------------------------------ main


def run_family(family: Family, args, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    for impl in family.impls:
        impl.best, impl.memory, impl.compile_seconds = math.inf, None, None
        impl.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    eager = [i for i in family.impls if not i.compiled]
    for impl in eager:
        impl.flops = count_flops(impl, device, dtype)
    flops_by_impl = {i.name: i.flops for i in eager}
    for impl in family.impls:
        if impl.compiled:  # the same math as the eager step of the same code
            impl.flops = flops_by_impl.get(impl.name.replace("compile", "eager"), flops_by_impl.get("unveil eager", 0))
        if device.type == "cpu" and not impl.compiled:
            impl.memory = saved_activation_bytes(impl, device, dtype)
        start = time.perf_counter()
        for _ in range(args.warmup):  # allocator, oneDNN primitives, autotuning; compilation for compiled steps
            train_step(impl, device, dtype)
        synchronize(device)
        if impl.compiled:
            impl.compile_seconds = time.perf_counter() - start
    peak = matmul_flops_per_sec(device, dtype)
    for round_index in range(args.rounds):
        order = family.impls if round_index % 2 == 0 else list(reversed(family.impls))
        for impl in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            impl.best = min(impl.best, time_steps(impl, args.steps, device, dtype))
            if device.type == "cuda":
                impl.memory = max(impl.memory or 0, torch.cuda.max_memory_allocated(device))
    peak = max(peak, matmul_flops_per_sec(device, dtype))

    print(f"\n## {family.name}: {args.steps} steps x {args.rounds} rounds, "
          f"{dtype_name(dtype)}, {device_name(device)}")
    for note in family.notes:
        print(f"   {note}")
    print(f"   large matmul: {peak / 1e9:.1f} GFLOP/s")
    memory_label = "peak MB" if device.type == "cuda" else "saved MB"
    print(f"   {'implementation':<42}{'samples/s':>10}{'vs first':>9}{'GFLOP/step':>11}{'of matmul':>10}"
          f"{memory_label:>10}{'compile s':>10}")
    rates = {}
    first = None
    for impl in family.impls:
        rate = family.samples_per_step * args.steps / impl.best
        first = first or rate
        rates[impl.name] = rate
        achieved = impl.flops * args.steps / impl.best
        memory = f"{impl.memory / 2**20:.0f}" if impl.memory is not None else "-"
        compile_s = f"{impl.compile_seconds:.0f}" if impl.compile_seconds is not None else "-"
        print(f"   {impl.name:<42}{rate:>10.2f}{rate / first:>8.2f}x{impl.flops / 1e9:>11.1f}"
              f"{achieved / peak:>10.1%}{memory:>10}{compile_s:>10}")
    if family.reference_rate is not None:
        what, reference = family.reference_rate
        print(f"   for scale: {what}: {reference} samples/s")
    return rates


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["mae-image", "mae-video", "mavil-1", "mavil-2"],
                        help=f"any of {sorted(FAMILIES)}")
    parser.add_argument("--size", default="base", help="MAE Hiera size: tiny | small | base | base_plus | ...")
    parser.add_argument("--batch", type=int, default=None, help="MAE image batch (default: 8 on CPU, 64 on CUDA)")
    parser.add_argument("--video-batch", type=int, default=None, help="MAE video batch (default: 1 CPU, 8 CUDA)")
    parser.add_argument("--mavil-size", default="base", help="small | base | large")
    parser.add_argument("--mavil-batch", type=int, default=None, help="MAViL batch (default: 2 CPU, 32 CUDA)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each implementation's best counts")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", action="store_true", help="add unveil's compiled step")
    parser.add_argument("--compile-references", action="store_true",
                        help="also compile the official model and hiera_optim's graph-safe one")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None,
                        help="default: fp32 on CPU, fp32 bf16 fp16 on CUDA")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--loader", action="store_true", help="loader samples/s per worker beside each step")
    parser.add_argument("--loader-batches", type=int, default=4)
    parser.add_argument("--data", help="folder for the loader's generated data (default: a temporary one)")
    args = parser.parse_args()
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    args.batch = args.batch or (64 if cuda else 8)
    args.video_batch = args.video_batch or (8 if cuda else 1)
    args.mavil_batch = args.mavil_batch or (32 if cuda else 2)
    dtypes = [DTYPES[d] for d in (args.dtypes or (["fp32", "bf16", "fp16"] if cuda else ["fp32"]))]
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {device_name(device)}; samples/s are best-of-{args.rounds} rounds, "
          "implementations alternating in one process")

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(args.data or temporary)
        for name in args.families:
            family = FAMILIES[name](args, device)
            rates = {}
            for dtype in dtypes:
                rates = run_family(family, args, device, dtype)
            if args.loader and family.modality is not None:
                step_rate = max(rates.values())
                per_worker = loader_per_worker(family.modality, root, args.loader_batches)
                print(f"   loader ({family.modality}, recipe DataModule, 1 process): {per_worker:.1f} samples/s per "
                      f"worker; the step consumes {step_rate:.2f}/s: {math.ceil(step_rate / per_worker)} worker(s)")
                if family.modality == "video":
                    for label, rate in video_decode_rates(root, args.loader_batches).items():
                        print(f"   video decode from {label}: {rate:.2f} clips/s per worker; at {step_rate:.2f} "
                              f"clips/s the step needs {math.ceil(step_rate / rate)} decode worker(s)")
            del family


if __name__ == "__main__":
    main()
