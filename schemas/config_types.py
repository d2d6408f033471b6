"""The constrained value types and limits of the run configuration's keys (checked by msgspec at decode time)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

Device = Literal["auto", "cpu", "cuda"]
Port = Annotated[int, Meta(ge=0, le=65535)]
"""A TCP port to listen on; 0 is any free one (the one bound is logged)."""
Fraction = Annotated[float, Meta(gt=0.0, lt=1.0)]
MAX_SECONDS = 1e9
"""The longest duration a key takes (about 31 years): a wait of 1e308 s overflowed the platform's clock at run time."""
Seconds = Annotated[float, Meta(gt=0.0, le=MAX_SECONDS)]
Millis = Annotated[float, Meta(gt=0.0, le=MAX_SECONDS * 1e3)]
NonNegSeconds = Annotated[float, Meta(ge=0.0, le=MAX_SECONDS)]
NonNegMillis = Annotated[float, Meta(ge=0.0, le=MAX_SECONDS * 1e3)]
HostModel = Annotated[
    str,
    # "expected": what a refusal says instead of the pattern (esper.config_errors), which read as a raw regex.
    Meta(
        pattern=r"^(cnn1d|mlp|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        extra={"expected": "cnn1d, mlp or package.module:factory"},
    ),
]
"""A built-in host ("cnn1d", "mlp") or a "package.module:factory" returning an nn.Module."""
InitialSeed = Annotated[str, Meta(pattern=r"^[A-Za-z_][\w.]*=[A-Za-z_][\w.-]*$")]
"""``"<slot>=<blueprint id>"``: a seed of that blueprint (default parameters) in the slot after module ``<slot>``."""
RunSeed = Annotated[int, Meta(ge=0, le=2**32 - 1)]
"""NumPy's seed range: the seeds derived from it (x 1000 for initial seeds) must still fit torch's 64-bit seed."""
MAX_DATASET_SAMPLES = 1_000_000
"""250 times the default: MNIST-1D takes about 0.7 ms a sample to generate (12 minutes for this many), so more is a
typo (400,000,000 would have generated for days before the first epoch)."""
DatasetSamples = Annotated[int, Meta(ge=1, le=MAX_DATASET_SAMPLES)]
MAX_MEGABYTES = 2.0**24
"""16 TiB: a memory budget above it is a typo (1e308 overflowed the byte count the run computes from it)."""
# The alpha ramp's temperature, relative to a 20-step ramp (it scales with blend_ramp_steps). Above 3 the tanh ramp no
# longer starts near 0 and ends near 1 (3.4% off at 3, 7.6% at 4, 47.5% at 100): alpha would jump to 1 at the end.
MAX_BLEND_TEMPERATURE = 3.0
BlendTemperature = Annotated[float, Meta(gt=0.0, le=MAX_BLEND_TEMPERATURE)]
MemoryCapMB = Annotated[float, Meta(ge=0.0, le=MAX_MEGABYTES)]
MemoryBudgetMB = Annotated[float, Meta(gt=0.0, le=MAX_MEGABYTES)]
MIN_MAILBOX_CAPACITY = 64
"""The smallest ``weatherlight.mailbox_capacity``: the trainer's sends to Nissa and Kasmina do not wait, and a full
mailbox loses them (at 1 or 2 Kasmina lost receipts and packets and the run's result changed); Kasmina's own mailbox
is also never below what the command lag keeps in flight. Checked with the values a run cannot use
(esper.config_checks), not by the type: a run directory an earlier version wrote with a smaller one is still read."""
MailboxCapacity = Annotated[int, Meta(ge=1, le=2**63 - 1)]
MAX_NUM_THREADS = 256
"""torch's intra-op threads: far more than any CPU's cores gains nothing, and 100000 crashed the process."""
NumThreads = Annotated[int, Meta(ge=1, le=MAX_NUM_THREADS)]
