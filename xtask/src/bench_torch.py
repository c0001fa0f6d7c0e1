"""The anomalib side of `cargo xtask bench` (written to a temporary file and run by it).

Usage:
    python bench_torch.py infer|train BACKBONE SIZE BATCH WARMUP RUNS THREADS [DEVICE]
        -> one JSON line: {"times_s": [...], "peak_rss_kb": N, "max_allocated_mib": M or null}
    python bench_torch.py export BACKBONE SIZE OUT.safetensors
        -> writes the model's state dict (untimed setup for the start-up row)
    python bench_torch.py startup BACKBONE SIZE WEIGHTS IMAGE THREADS [DEVICE]
        -> imports anomalib, builds the model, loads WEIGHTS, scores IMAGE, prints the score
    python bench_torch.py fit BACKBONE SIZE BATCH EPOCHS THREADS ROOT WORKDIR
        -> anomalib's Engine.fit on the MVTec-layout category at ROOT (Folder datamodule, one
           loader worker, validation every epoch as anomalib does); WORKDIR takes its files
        -> {"fit_s": seconds in Engine.fit, "peak_rss_kb": N}

DEVICE is torch's name (cpu, cuda, cuda:1, mps; default cpu). Every timed iteration ends by
reading a number back to the host, which waits for the GPU, as our side does.

anomalib's own `ReverseDistillationModel`, `pre_trained=False`, layers 1..3, map mode `add`;
training uses anomalib's `ReverseDistillationLoss` and its own `configure_optimizers`.
"""

import json
import sys
import time
import types


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def build(backbone: str, size: int):
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    import torch

    torch.manual_seed(0)
    return ReverseDistillationModel(
        backbone=backbone,
        input_size=(size, size),
        layers=["layer1", "layer2", "layer3"],
        anomaly_map_mode="add",
        pre_trained=False,
    ).float()


def timed(
    mode: str, backbone: str, size: int, batch: int, warmup: int, runs: int, device: str
) -> None:
    import torch

    model = build(backbone, size).to(device)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, size, size, generator=g) * 4.0 - 2.0).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if mode == "infer":
        model.eval()

        def once():
            with torch.no_grad():
                out = model(x)
            return float(out.pred_score.max())

    else:
        from anomalib.models.image.reverse_distillation.lightning_model import ReverseDistillation
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

        criterion = ReverseDistillationLoss()
        opt = ReverseDistillation.configure_optimizers(types.SimpleNamespace(model=model))
        model.train()

        def once():
            opt.zero_grad(set_to_none=True)
            teacher, student = model(x)
            loss = criterion(teacher, student)
            loss.backward()
            opt.step()
            return float(loss)

    for _ in range(warmup):
        once()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    allocated = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    print(json.dumps({"times_s": times, "peak_rss_kb": rss_kb(), "max_allocated_mib": allocated}))


def export(backbone: str, size: int, out: str) -> None:
    from safetensors.torch import save_file

    model = build(backbone, size)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)


def startup(backbone: str, size: int, weights: str, image: str, device: str) -> None:
    # Everything from here is timed by the caller: imports, model, weights, image, one score.
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    model = build(backbone, size)
    model.load_state_dict(load_file(weights))
    model.eval().to(device)
    img = Image.open(image).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(((x - mean) / std).to(device))
    print(json.dumps({"score": float(out.pred_score.flatten()[0]), "peak_rss_kb": rss_kb()}))


def fit(backbone: str, size: int, batch: int, epochs: int, root: str, workdir: str) -> None:
    import os
    import warnings

    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import ReverseDistillation

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    defects = sorted(d for d in os.listdir(os.path.join(root, "test")) if d != "good")
    datamodule = Folder(
        name="bench",
        root=root,
        normal_dir="train/good",
        abnormal_dir=[f"test/{d}" for d in defects],
        normal_test_dir="test/good",
        train_batch_size=batch,
        eval_batch_size=batch,
        num_workers=1,
    )
    model = ReverseDistillation(
        backbone=backbone,
        layers=["layer1", "layer2", "layer3"],
        pre_trained=False,
        pre_processor=ReverseDistillation.configure_pre_processor(image_size=(size, size)),
        visualizer=False,
    )
    engine = Engine(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=workdir,
    )
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    print(json.dumps({"fit_s": time.perf_counter() - t0, "peak_rss_kb": rss_kb()}))


def main() -> None:
    mode = sys.argv[1]
    if mode in ("infer", "train"):
        backbone, size, batch, warmup, runs, threads = sys.argv[2:8]
        device = sys.argv[8] if len(sys.argv) > 8 else "cpu"
        import torch

        torch.set_num_threads(int(threads))
        timed(mode, backbone, int(size), int(batch), int(warmup), int(runs), device)
    elif mode == "export":
        export(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "startup":
        backbone, size, weights, image, threads = sys.argv[2:7]
        device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
        import torch

        torch.set_num_threads(int(threads))
        startup(backbone, int(size), weights, image, device)
    elif mode == "fit":
        backbone, size, batch, epochs, threads, root, workdir = sys.argv[2:9]
        import torch

        torch.set_num_threads(int(threads))
        fit(backbone, int(size), int(batch), int(epochs), root, workdir)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
