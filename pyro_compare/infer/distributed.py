r"""Data-parallel fitting on :mod:`torch.distributed` (gloo on CPU, nccl on GPU).

``pc.infer.fit(..., distributed=True)``, a fit started under ``torchrun`` (the CLI:
``torchrun --nproc-per-node N -m pyro_compare.cli fit ...``), or any fit called while a
process group is initialised (:func:`torch.distributed.is_initialized`) runs on N processes
("ranks"). Processes are started by ``torchrun`` or :mod:`torch.multiprocessing`; this module
opens no sockets and spawns nothing, it only calls collectives of the initialised group.

What each rank does per step
----------------------------
* **Data.** Rank ``r`` of ``N`` takes rows ``r::N`` of each source's minibatch of the
  one-process loader with the same ``batch_size`` and seed
  (``ComparativeData.loader(..., rank=r, world_size=N)``), so N ranks on a global batch B
  see the cells of one process's batch B, disjointly; ``SourceBatch.n`` stays the full
  source size.
* **Scaling.** Pyro scales rank r's shard of source s by :math:`n_s / |B_{rs}|`, so each
  rank's per-source loss is already an unbiased estimate of the full-data term. The fit
  multiplies it by :math:`w_{rs} = N |B_{rs}| / |B_s|` (exactly 1 when the shards have equal
  sizes; :math:`|B_s| = \sum_r |B_{rs}|` comes from one all-reduce of the shard sizes), so
  that the *mean over ranks* of the per-rank losses equals the one-process loss on the
  union batch, :math:`\frac 1N \sum_r w_{rs} \frac{n_s}{|B_{rs}|}\sum_{i \in B_{rs}}
  \ell_i = \frac{n_s}{|B_s|}\sum_{i \in B_s} \ell_i`, also for uneven shards. (Sites outside
  the source plates, ``"global"``, are computed whole on every rank: weight 1.)
* **Gradients.** After ``loss.backward()`` every parameter's gradient (the model's and the
  objective's) is averaged over ranks with one all-reduce of a flattened buffer
  (:func:`all_reduce_gradients`), before clipping and the Adam step. By the identity above
  the averaged gradient is the gradient of the one-process loss on the union batch, so the
  ranks take identical steps and their parameters stay identical.

Why an explicit all-reduce rather than ``DistributedDataParallel``
------------------------------------------------------------------
DDP synchronises gradients from hooks armed by the wrapped module's ``forward``. Pyro never
calls ``forward`` of a comparative model: the ELBO runs ``model.model`` and ``model.guide``
under poutine handlers, and the loss is assembled outside the module (per-source terms,
objectives that take extra ``autograd.grad`` passes for MGDA, penalties reading the guide
trace). Wrapping would need a ``forward`` that runs the whole ELBO and objective, which
breaks the objectives' own ``autograd.grad`` calls (DDP's reducer fires on them) and the
unused-parameter bookkeeping (a source absent from a shard leaves its encoder without
gradient). Averaging the gradients after ``backward`` is what DDP computes, without
bucketing overlap: for models of this size (10^5 - 10^6 parameters) one flat all-reduce
per step costs little next to the ELBO.

Objectives across ranks
-----------------------
:func:`reduce_mean` is the hook objectives call (the identity without a process group):

* :class:`~pyro_compare.infer.objectives.Sum`: only the gradient all-reduce;
* :class:`~pyro_compare.infer.objectives.MultiObjective` averages the per-source gradients
  on the shared parameters (and, for ``normalize="loss"``, the losses) before solving for
  the MGDA weights: every rank solves the same min-norm problem, the one of the union batch;
* :class:`~pyro_compare.infer.objectives.Constrained` averages the penalty value used for the
  dual step, so the multiplier and its moving average are identical on every rank. A
  penalty that is a mean over cells (``wasserstein_to_zero``) averaged over equal shards is
  the penalty of the union batch; a nonlinear one (the MMD and HSIC U-statistics) is not:
  the N-process fit then optimises the *mean over the shards* of the penalty,
  :math:`\bar P = \frac 1N \sum_r P(B_r)`, i.e. the one-process fit whose penalty is
  evaluated per shard and averaged (an unbiased estimate of the same population quantity,
  with the variance of batches of size B/N). This is what the tests check.

Randomness: every rank uses the same seed for the initial parameters and the minibatch
permutations (parameters are also broadcast from rank 0 at the start); the ELBO's sampling
noise uses a per-rank stream (``seed`` mixed with the rank), so ranks draw independent
noise for their cells. Checkpoints hold every rank's RNG state.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..data.sources import SourceBatch

__all__ = [
    "DataParallel",
    "all_reduce_gradients",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_distributed",
    "reduce_mean",
    "shard_batch",
]


def is_distributed() -> bool:
    """Whether a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """nccl reduces CUDA tensors only; gloo CPU (and CUDA) tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over the ranks (a new tensor, detached); the identity (detached)
    without a process group. Every rank must call it, in the same order."""
    tensor = tensor.detach()
    if not is_distributed():
        return tensor
    device = _collective_device(tensor)
    out = tensor.to(device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    out /= dist.get_world_size()
    return out.to(tensor.device)


def all_reduce_gradients(params: Sequence[torch.Tensor], flag: float = 0.0) -> float:
    """Average ``p.grad`` over the ranks in place, with one all-reduce of a flat buffer.

    A parameter without a gradient counts as zero; it keeps ``grad=None`` only when no rank
    had a gradient for it (so Adam skips it, as in one process). ``flag`` (e.g. 1.0 for a
    non-finite local loss) is summed over the ranks and returned, so every rank takes the
    same decision.
    """
    if not is_distributed():
        return float(flag)
    params = list(params)
    if not params:
        return float(flag)
    ref = params[0]
    device = _collective_device(ref)
    sizes = [p.numel() for p in params]
    chunks = [
        (p.grad.detach().reshape(-1) if p.grad is not None else p.new_zeros(p.numel()))
        for p in params
    ]
    has = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype, device=ref.device)
    flat = torch.cat([*[c.to(ref.dtype) for c in chunks], has, has.new_tensor([flag])])
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.to(ref.device)
    world = dist.get_world_size()
    total = sum(sizes)
    grads = (flat[:total] / world).split(sizes)
    counts = flat[total : total + len(params)]
    for p, g, c in zip(params, grads, counts):
        if float(c) == 0:
            p.grad = None
        elif p.grad is None:
            p.grad = g.view_as(p).to(p.dtype).clone()
        else:
            p.grad.copy_(g.view_as(p))
    return float(flat[-1])


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (parameters, buffers) on every rank with rank ``src``'s."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in tensors:
            buf = t.detach().to(_collective_device(t), copy=True)
            dist.broadcast(buf, src=src)
            t.copy_(buf.to(t.device))


def shard_batch(
    batch: dict[str, SourceBatch], rank: int, world_size: int
) -> dict[str, SourceBatch]:
    """Rows ``rank::world_size`` of every source of a one-process minibatch (``n`` kept)."""
    out = {}
    for name, src in batch.items():
        fields = {}
        for k in ("x_ng", "library_n", "index_n", "design_nk"):
            value = getattr(src, k)
            if value is not None:
                value = value[rank::world_size]
            fields[k] = value
        n = src.n if src.n is not None else src.size
        out[name] = SourceBatch(n=n, role=src.role, **fields)
    return out


def init_process_group(device: torch.device | str | None = None) -> bool:
    """Initialise the default process group from the environment ``torchrun`` sets
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): nccl for a CUDA device,
    gloo otherwise. Returns ``True`` if this call created it (``False``: one existed)."""
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch.")
    if dist.is_initialized():
        return False
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"distributed=True needs a process group: none is initialised and the environment "
            f"lacks {missing}. Start the processes with torchrun (e.g. `torchrun "
            f"--nproc-per-node 2 -m pyro_compare.cli fit ...` or `torchrun --nproc-per-node 2 "
            f"my_script.py`), or call torch.distributed.init_process_group first."
        )
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_device(device))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def local_device(device: torch.device | str | None) -> torch.device | None:
    """``"cuda"`` without an index means this process's GPU, ``cuda:LOCAL_RANK``."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@dataclass
class DataParallel:
    """What :func:`~pyro_compare.infer.fit` needs to know about the ranks (one object per
    fit; ``active=False``: a plain one-process fit, every method a no-op)."""

    active: bool = False
    rank: int = 0
    world_size: int = 1

    @classmethod
    def resolve(cls, distributed: bool | None, device=None) -> DataParallel:
        """``None``: use the process group if one is initialised; ``True``: initialise it
        from torchrun's environment if needed; ``False``: one process, even inside a group."""
        if distributed is False:
            return cls()
        if distributed:
            init_process_group(device)
        if not is_distributed():
            return cls()
        return cls(True, dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """Rank 0: writes checkpoints, history and the progress bar."""
        return self.rank == 0

    def loader(self, data, batch_size: int, shuffle: bool, split: str | None, seed=None):
        """This rank's shard of each minibatch of ``data.loader`` (see the module docstring)."""
        if not self.active:
            yield from data.loader(batch_size, shuffle=shuffle, split=split, seed=seed)
            return
        if "world_size" in inspect.signature(data.loader).parameters:
            yield from data.loader(
                batch_size,
                shuffle=shuffle,
                split=split,
                seed=seed,
                rank=self.rank,
                world_size=self.world_size,
            )
        else:  # a loader without rank/world_size: shard its one-process batches here
            for batch in data.loader(batch_size, shuffle=shuffle, split=split, seed=seed):
                yield shard_batch(batch, self.rank, self.world_size)

    def source_weights(self, batch: dict[str, SourceBatch], sources: Sequence[str]) -> dict:
        r"""Per-source :math:`w_{rs} = N |B_{rs}| / |B_s|`: :math:`|B_s|` from the loader's
        ``global_sizes`` (a ``ShardBatch``), else from one all-reduce of the shard sizes."""
        if not self.active:
            return {s: 1.0 for s in sources}
        known = getattr(batch, "global_sizes", None) or {}
        if all(s in known for s in sources):
            return {
                s: self.world_size * (batch[s].size if s in batch else 0) / known[s]
                if known[s] > 0
                else 0.0
                for s in sources
            }
        local = torch.tensor(
            [float(batch[s].size) if s in batch else 0.0 for s in sources], dtype=torch.float64
        )
        total = local.to(self._device(), copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total = total.cpu()
        return {
            s: (self.world_size * float(local[i]) / float(total[i])) if total[i] > 0 else 0.0
            for i, s in enumerate(sources)
        }

    def mean_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of floats over the ranks; a key some ranks lack (e.g. a callback's
        per-perturbation loss, for perturbations absent from a rank's shards) is averaged
        over the ranks that have it. Returns the union of the keys, the same on every rank."""
        if not self.active:
            return dict(values)
        keys = self._union_keys(values)
        if not keys:
            return {}
        t = torch.tensor(
            [values.get(k, 0.0) for k in keys] + [float(k in values) for k in keys],
            dtype=torch.float64,
        ).to(self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t.cpu()
        sums, counts = t[: len(keys)], t[len(keys) :]
        return {k: float(v / c) for k, v, c in zip(keys, sums, counts)}

    def _union_keys(self, values: dict[str, float]) -> list[str]:
        """Sorted union of every rank's keys (UTF-8 bytes through all_gather, no pickling)."""
        encoded = "\0".join(sorted(values)).encode()
        local = torch.tensor(list(encoded), dtype=torch.uint8).to(self._device())
        size = torch.tensor([local.numel()], dtype=torch.int64).to(self._device())
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = max(int(n) for n in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8, device=local.device)
        padded[: local.numel()] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        keys: set[str] = set()
        for buf, n in zip(gathered, sizes):
            text = bytes(buf[: int(n)].cpu().tolist()).decode()
            if text:
                keys.update(text.split("\0"))
        return sorted(keys)

    def _device(self) -> torch.device:
        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _minmax(self, value: torch.Tensor) -> tuple[float, float]:
        lo = value.to(self._device(), copy=True)
        hi = value.to(self._device(), copy=True)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return float(lo.flatten()[0]), float(hi.flatten()[0])

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (decisions taken on local clocks, e.g. max_time)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.broadcast(t, src=0)
        return bool(t.item() > 0)

    def check_same(self, value: int, what: str) -> None:
        """Raise on every rank unless ``value`` is the same on all ranks."""
        if not self.active:
            return
        lo, hi = self._minmax(torch.tensor([float(value)], dtype=torch.float64))
        if lo != hi:
            raise RuntimeError(what)

    def gather_rng_states(self) -> torch.Tensor:
        """Every rank's CPU torch RNG state, stacked (world_size, L) (rank order)."""
        state = torch.get_rng_state()
        if not self.active:
            return state[None]
        buf = state.to(self._device())
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return torch.stack([o.cpu() for o in out])

    def barrier(self) -> None:
        if self.active:
            dist.barrier()
