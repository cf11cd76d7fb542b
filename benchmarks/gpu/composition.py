"""Stage ``composition``: a converted model on the device under activation checkpointing applied from
outside (its recompute runs in one of autograd's device threads, where no call is open) and under
threads sharing it; both against the plain run of the same model."""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING

import torch

import mhc_fx
from tests.helpers import apply_checkpointing, perturb_mixing

from ..progress import log
from .models import gpt_inputs, loss_of, rel_diff

if TYPE_CHECKING:
    from .run import Run

FORMS = ("checkpoint_wrapper", "forward_partial", "selective")


def _grads(model, idx, targets) -> dict:
    model.zero_grad(set_to_none=True)
    loss_of(model, idx, targets).backward()
    return {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone() for n, p in model.named_parameters()}


def composition(run: Run) -> dict:
    layers, dim, seq, batch = (2, 32, 16, 2) if run.tiny else (4, 128, 64, 4)
    base, idx, targets = gpt_inputs(layers, dim, seq, batch, run.device)
    model = perturb_mixing(mhc_fx.convert(base, mode="mhc"), 0.3).to(run.device).train()
    expected = _grads(model, idx, targets)
    rows = []
    for form in FORMS:
        checkpointed = copy.deepcopy(model)
        apply_checkpointing(form, checkpointed, list(checkpointed.blocks))
        got = _grads(checkpointed, idx, targets)
        rows.append({"form": form, "grad_rel_diff_max": max(rel_diff(got[n], g) for n, g in expected.items())})
        log(f"  checkpointing {form:20s} grads vs none {rows[-1]['grad_rel_diff_max']:.1e}")
    model.eval()
    inputs = [idx[:, : seq - i] for i in range(8)]
    with torch.no_grad():
        single = [model(x) for x in inputs]
    mismatches, errors = [0], []

    def work(i):
        try:
            with torch.no_grad():
                for _ in range(4):
                    mismatches[0] += int(not torch.equal(model(inputs[i]), single[i]))
        except Exception as exc:  # recorded below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log(f"  8 threads x 4 calls: {mismatches[0]} outputs differ from single-threaded, errors {errors[:1]}")
    return {
        "model": dict(layers=layers, dim=dim, seq=seq, batch=batch),
        "checkpointing": rows,
        "threads": {"threads": 8, "calls": 32, "mismatches": mismatches[0], "errors": errors[:3]},
    }
