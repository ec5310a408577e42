"""Runs the reference code (sheeerio/continual, branch `sept`) offline, unmodified.

    python experiments/reference/run_reference.py --reference /tmp/continual \
        --out experiments/results/reference_match/reference/l2_seed0.csv \
        --subset 21000 -- --dataset MNIST --runs 10 --epochs 25 --seed 0 \
        --reg l2 --l2_lambda 1e-3 --lr 1e-3 --lr_schedule pl_lyapunov

Everything after `--` goes to the reference's `implicit_regularization.py`
as its own flags. Its code is not part of this repository; this script only
supplies what it reaches for outside this machine (experiments/reference/README.md):
* `wandb`: a stand-in module whose `log` is recorded. Each task's end (the
  call that carries `task_acc`) becomes one CSV row: the task, its average
  online accuracy (`task_acc`), the loss over the task's data (`J`), the
  learning rate of each parameter group (one per layer) and the first group's
  Adam betas, read from the run's optimizer, and the wall time.
* `torchvision`: PyPI's torchvision does not import beside the CPU build of
  torch that this machine carries, and Debian's torch (1.13, generic BLAS)
  runs the reference about 10x slower, so a stand-in module provides the
  little the reference takes from it: `datasets.MNIST`, which reads the
  Fashion-MNIST IDX files of the Debian package `dataset-fashion-mnist`, the
  first `--subset` training images (the paper's 21,000; the reference itself
  would take all 60,000 of MNIST; with every label random the images hardly
  matter), and `transforms.Compose`, `ToTensor` (uint8 -> float / 255 with a
  channel axis), `Normalize` and `Lambda`, with torchvision's arithmetic.
  Transformed images are cached: the reference's transform is deterministic.
  When a real torchvision imports, only `datasets.MNIST` is replaced.
* `torch.utils.data.DataLoader`: `num_workers=0` (the reference asks for 4;
  the worker processes change no number, only cost a 2-core machine time).
  With `--drop-last` its training loader also drops each epoch's last
  partial batch (8 of 21,000 images at batch 256), as the library does: a
  change to the reference, only to test whether that batch explains a gap.
Rows are flushed after every task, so an interrupted run keeps what it did.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import runpy
import sys
import time
import types

FASHION = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str):
  import numpy as np
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  dims = raw[3]
  shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def idx_file(data_dir: str, stem: str) -> str:
  for name in (stem, stem + ".gz"):
    if os.path.exists(os.path.join(data_dir, name)):
      return os.path.join(data_dir, name)
  raise SystemExit(f"data-dir: no {stem}[.gz] in {data_dir}; install the Debian package "
                   "dataset-fashion-mnist or give --data-dir")


def local_mnist(data_dir: str, subset: int, pil: bool):
  """A torchvision.datasets.MNIST stand-in reading IDX files from `data_dir`; its
  images go to the transform as PIL images (real torchvision) or uint8 tensors."""
  import torch

  class LocalMNIST(torch.utils.data.Dataset):
    def __init__(self, root=None, train=True, download=False, transform=None):
      prefix = "train" if train else "t10k"
      images = read_idx(idx_file(data_dir, f"{prefix}-images-idx3-ubyte"))
      labels = read_idx(idx_file(data_dir, f"{prefix}-labels-idx1-ubyte"))
      if train and subset:
        images, labels = images[:subset], labels[:subset]
      self.data = torch.from_numpy(images.copy())
      self.targets = torch.from_numpy(labels.astype("int64"))
      self.transform = transform
      self._cache = {}

    def __len__(self):
      return len(self.targets)

    def __getitem__(self, i):
      i = int(i)  # the reference's Subset indexes with 0-d tensors, which hash by identity
      if i not in self._cache:
        image = self.data[i]
        if pil:
          from PIL import Image
          image = Image.fromarray(image.numpy(), mode="L")
        self._cache[i] = image if self.transform is None else self.transform(image)
      return self._cache[i], int(self.targets[i])

  return LocalMNIST


def torchvision_stand_in(mnist):
  """A module with the parts of torchvision that the reference uses on MNIST."""
  import torch

  class Compose:
    def __init__(self, steps):
      self.steps = steps

    def __call__(self, x):
      for step in self.steps:
        x = step(x)
      return x

  class ToTensor:
    def __call__(self, image):  # (H, W) uint8 -> (1, H, W) float in [0, 1]
      return torch.as_tensor(image).to(torch.float32).div(255.0).unsqueeze(0)

  class Normalize:
    def __init__(self, mean, std):
      self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
      self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, x):
      return (x - self.mean) / self.std

  class Lambda:
    def __init__(self, fn):
      self.fn = fn

    def __call__(self, x):
      return self.fn(x)

  def missing(name):
    def refuse(*a, **k):
      raise SystemExit(f"reference: the torchvision stand-in has no {name}; install a "
                       "torchvision that imports with this torch")
    return refuse

  vision = types.ModuleType("torchvision")
  vision.transforms = types.ModuleType("torchvision.transforms")
  for cls in (Compose, ToTensor, Normalize, Lambda):
    setattr(vision.transforms, cls.__name__, cls)
  vision.transforms.Resize = missing("transforms.Resize")
  vision.datasets = types.ModuleType("torchvision.datasets")
  vision.datasets.MNIST = mnist
  vision.datasets.CIFAR10 = missing("datasets.CIFAR10")
  return vision


def rss_mb() -> int:
  """This process's resident memory now, in MB."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20


class Recorder:
  """The `wandb` stand-in: one CSV row per task end."""

  def __init__(self, out: str):
    self.out, self.task, self.started, self.optimizer = out, 0, time.time(), None
    self.writer = None

  def module(self):
    wandb = types.ModuleType("wandb")
    wandb.init = lambda *a, **k: types.SimpleNamespace(name=k.get("name", ""))
    wandb.define_metric = lambda *a, **k: None
    wandb.finish = lambda *a, **k: None
    wandb.log = self.log
    wandb.config = {}
    return wandb

  def log(self, values, *args, **kwargs):
    if "task_acc" not in values:
      return
    groups = self.optimizer.param_groups if self.optimizer is not None else []
    row = {"task": self.task, "online_accuracy": values["task_acc"], "loss": values.get("J"),
           "seconds": round(time.time() - self.started, 1),
           "rss_mb": rss_mb()}
    for group in groups:
      row[f"lr_{group.get('layer', len(row))}"] = group["lr"]
    if groups and "betas" in groups[0]:
      row["first_group_b1"], row["first_group_b2"] = groups[0]["betas"]
    if self.writer is None:
      self.file = open(self.out, "w", newline="")
      self.writer = csv.DictWriter(self.file, fieldnames=list(row))
      self.writer.writeheader()
    self.writer.writerow(row)
    self.file.flush()
    print(f"reference: task {self.task + 1}: online accuracy {row['online_accuracy']:.4f} "
          f"({row['seconds']:.0f} s)", flush=True)
    self.task += 1


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  ours, theirs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
      else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", required=True,
                      help="a checkout of sheeerio/continual at branch sept")
  parser.add_argument("--out", required=True, help="CSV of one row per task")
  parser.add_argument("--data-dir", default=FASHION, help="IDX files (default: %(default)s)")
  parser.add_argument("--drop-last", action="store_true",
                      help="drop each epoch's last partial batch, as the library does (a "
                      "change to the reference, to test whether it explains a gap)")
  parser.add_argument("--subset", type=int, default=21000,
                      help="first N training images (0: all; default %(default)s)")
  args = parser.parse_args(ours)
  script = os.path.join(args.reference, "implicit_regularization.py")
  if not os.path.exists(script):
    raise SystemExit(f"reference: no implicit_regularization.py in {args.reference}; give a "
                     "checkout of sheeerio/continual at branch sept")
  out = os.path.abspath(args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)

  import torch
  try:
    import torchvision
    torchvision.datasets.MNIST = local_mnist(args.data_dir, args.subset, pil=True)
  except Exception:  # PyPI's torchvision beside this torch: "operator torchvision::nms ..."
    vision = torchvision_stand_in(local_mnist(args.data_dir, args.subset, pil=False))
    sys.modules.update({"torchvision": vision, "torchvision.transforms": vision.transforms,
                        "torchvision.datasets": vision.datasets})

  recorder = Recorder(out)
  sys.modules["wandb"] = recorder.module()
  loader = torch.utils.data.DataLoader

  class SerialLoader(loader):
    def __init__(self, *a, **k):
      k["num_workers"] = 0
      if args.drop_last and k.get("shuffle"):  # the training loader, not the evaluation's
        k["drop_last"] = True
      super().__init__(*a, **k)

  torch.utils.data.DataLoader = SerialLoader
  adam_init = torch.optim.Adam.__init__

  def remember(self, *a, **k):  # the run's optimizer, to read its groups at task ends
    adam_init(self, *a, **k)
    recorder.optimizer = self

  torch.optim.Adam.__init__ = remember
  torch.set_num_threads(1)
  sys.path.insert(0, args.reference)
  sys.argv = [script, *theirs]
  os.chdir(args.reference)
  runpy.run_path(script, run_name="__main__")
  return 0


if __name__ == "__main__":
  sys.exit(main())
