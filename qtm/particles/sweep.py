"""Particle sweeps: run every grid point's replicates and stream the rows to a table.

The work is split into tasks of one grid point and a block of replicates (at most
:data:`TASK_INDIVIDUALS` individuals each, so memory stays bounded), and the rows are
written in task order as soon as each task is done; a window of at most two tasks per
worker is in flight at a time. The output appears under its name only when complete, and
together with its provenance (:func:`qtm.io.atomic_table`).

Where the tasks run (``options["cluster"]``):

- an address (``tcp://host:8786``): a Dask ``distributed`` cluster; an unreachable
  address, or one where no scheduler answers, is a one-line :class:`QTMError` after
  :data:`CONNECT_TIMEOUT_S` seconds, and a scheduler without workers after :data:`WORKER_TIMEOUT_S`;
- ``None``: in this process (the Numba kernels use all cores) when the sweep has at most
  :data:`LOCAL_WORK_LIMIT` particle-steps, else a ``distributed.LocalCluster`` of one
  single-threaded worker process per core. Results are the same either way: a
  replicate depends only on (seed, replicate index).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd

from qtm.diffusion import DiffusionConfig
from qtm.errors import QTMError
from qtm.io import atomic_table, check_table_path, to_json
from qtm.params import (
    GRID_PARAMETERS,
    MODEL_PARAMETERS,
    PARAMETERS,
    PARTICLE_POPULATION,
    default_uncond_fidelity,
    effective_cfg,
)
from qtm.particles.engine import simulate_chain, simulate_qg
from qtm.particles.model import ChainSetup, Finetune, Fitness, QGSetup
from qtm.provenance import provenance
from qtm.schedules import CFGSchedule

#: Individuals (population x replicates) one task holds at most.
TASK_INDIVIDUALS = 1 << 21
#: Particle-steps (replicates x population x iterations x steps) up to which a sweep runs in-process.
LOCAL_WORK_LIMIT = 5e9
CONNECT_TIMEOUT_S = 5
#: Seconds a scheduler may take to have its first worker.
WORKER_TIMEOUT_S = 30
#: dask's configuration variable of the ``distributed`` logger's level.
_WORKER_LOGGING = "DASK_LOGGING__DISTRIBUTED"

#: The options that are not grid columns: the base model, the data and the particle engine's own.
OPTIONS = (*MODEL_PARAMETERS, "population", "replicates", "seed", "dims", "modes", "particle_model",
           "resampling", "cluster")


def simulate_particles(points: pd.DataFrame, *, options: dict, out, progress=None, calibration=None) -> Path:
    """Run the particle model at every grid point and stream a tidy table to ``out``.

    Parameters
    ----------
    points : pandas.DataFrame
        One row per grid point; columns among :data:`qtm.params.GRID_PARAMETERS` (the
        others take their defaults, :mod:`qtm.params`). Every column is copied into the output rows.
    options : dict
        Non-grid options, keys among :data:`OPTIONS`, defaults from :mod:`qtm.params`
        (``population`` :data:`qtm.params.PARTICLE_POPULATION`); ``dims`` defaults to the length
        of the per-axis lists among the model options (else 1). ``particle_model="sampler"`` runs
        the guided-sampler chain; ``particle_model="qg"`` the classic loop whose fitness is the CFG
        tilt (p_c/p_u)^(w-1) of the refitted Gaussian models at the schedule's mean scale, as the
        moments engine's ``tilt`` sampler (one mode only; ``resampling`` ``multinomial`` or
        ``systematic``). ``cluster`` is a Dask scheduler's address.
    out : str or Path
        ``.parquet`` (provenance in its metadata) or ``.csv`` (provenance beside it).
    progress : callable, optional
        Called as ``progress(done, total)`` after each grid point.
    calibration : dict, optional
        The record of the calibration the points and model came from, kept in the provenance.

    Returns
    -------
    Path of the table: one row per point x replicate x iteration x axis with the point's
    columns, ``replicate``, ``iteration``, ``axis``, ``mean``, ``var`` (the population's
    MLE variance), ``total_var`` (sum over axes), ``occupancy_0 ..`` (share per mixture
    component) and ``w2_to_data`` (2-Wasserstein distance of the Gaussian with the
    population's moments to the data distribution; NaN for mixtures).

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> points = pd.DataFrame({"cfg": [1.0, 3.0], "iterations": [2, 2], "steps": [10, 10]})
    >>> path = simulate_particles(points, options={"population": 50, "replicates": 2},
    ...                           out=tempfile.mkdtemp() + "/sweep.csv")
    >>> len(pd.read_csv(path))  # 2 points x 2 replicates x 2 iterations x 1 axis
    8
    """
    out = check_table_path(out)
    opts = _options(options)
    setups = [_setup(row, opts) for row in _point_rows(points)]
    tasks = _tasks(setups, opts)
    work = sum(_work(setups[p], count) for p, _, count in tasks)
    client, cluster = _connect(opts["cluster"], local=work > LOCAL_WORK_LIMIT and len(tasks) > 1)
    # NaN marks a default in a grid column (e.g. uncond_fidelity); JSON has no NaN, so it is recorded as null.
    listed = points.astype(object).where(points.notna(), None).to_dict(orient="list")
    record = provenance({"options": opts, "points": listed, **({"calibration": calibration} if calibration else {})},
                        seed=opts["seed"])
    try:
        # The table and its provenance appear together, once every row is written.
        with atomic_table(out, provenance=record) as tmp:
            writer = _Writer(tmp, out.suffix, record)
            try:
                _run(tasks, setups, points, opts, client, writer, progress)
            finally:
                writer.close()
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return out


def _options(options: dict) -> dict:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise QTMError(f"unknown particle option(s) {', '.join(sorted(unknown))}; known: {', '.join(OPTIONS)}")
    defaults = {name: PARAMETERS[name].default for name in OPTIONS}
    defaults["population"] = PARTICLE_POPULATION
    opts = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    if opts["dims"] is None:  # one value per axis given for some option: that many axes
        lengths = [np.ndim(opts[k]) and np.shape(opts[k])[-1] for k in MODEL_PARAMETERS]
        opts["dims"] = max([1, *lengths])
    for name in ("population", "replicates", "seed", "dims", "modes", "particle_model", "resampling", "cluster"):
        opts[name] = PARAMETERS[name].check(opts[name])
    if opts["particle_model"] == "qg" and opts["modes"] != 1:
        raise QTMError(f"particle model 'qg' fits one Gaussian (modes=1), got modes={opts['modes']}; use 'sampler'")
    return opts


def _point_rows(points: pd.DataFrame) -> list[dict]:
    unknown = set(points.columns) - set(GRID_PARAMETERS)
    if unknown:
        raise QTMError(
            f"unknown grid column(s) {', '.join(sorted(unknown))}; known: {', '.join(GRID_PARAMETERS)}"
        )
    if len(points) == 0:
        raise QTMError("the grid has no points; give at least one value per option")
    rows = []
    for record in points.to_dict(orient="records"):
        row = {**{name: PARAMETERS[name].default for name in GRID_PARAMETERS}, **record}
        if row["uncond_fidelity"] is not None and pd.isna(row["uncond_fidelity"]):
            row["uncond_fidelity"] = None
        for name in ("guidance_gain", "uncond_drift", "drop", "fidelity"):
            PARAMETERS[name].check(row[name])
        # The calibrated model's two terms, as the moments engine takes them: the sampler's peak scale and rho_u.
        row["cfg"] = effective_cfg(float(PARAMETERS["cfg"].check(row["cfg"])), float(row["guidance_gain"]))
        if row["uncond_fidelity"] is None:
            row["uncond_fidelity"] = float(default_uncond_fidelity(row["drop"], row["fidelity"], row["uncond_drift"]))
        rows.append(row)
    return rows


def _setup(row: dict, opts: dict) -> ChainSetup | QGSetup:
    """Validate one grid point (all points are checked before anything runs or is written)."""
    base = {k: opts[k] for k in MODEL_PARAMETERS[:4]}
    errors = {k: row[k] for k in ("var_fidelity", "var_shift", "process_noise")}  # finetuning's, issue 13
    if opts["particle_model"] == "sampler":
        return ChainSetup.build(
            population=opts["population"], iterations=row["iterations"], modes=opts["modes"],
            dims=opts["dims"], data_mean=opts["data_mean"], data_var=opts["data_var"],
            fidelity=row["fidelity"], drop=row["drop"],
            uncond_fidelity=row["uncond_fidelity"], finetune=row["finetune"], cfg=row["cfg"],
            schedule=row["schedule"], sampler=row["sampler"], steps=row["steps"], eta=row["eta"],
            mutation=row["mutation"], real_fraction=row["real_fraction"], data_workflow=row["data_workflow"],
            **errors, **base,
        )
    if PARAMETERS["sampler"].check(row["sampler"]) != "tilt":
        raise QTMError(
            f"particle model 'qg' selects with the idealised CFG tilt; give --sampler tilt (got {row['sampler']!r}) "
            "or use --particle-model sampler for the guided sampler"
        )
    steps = PARAMETERS["steps"].check(row["steps"])
    cfg = float(PARAMETERS["cfg"].check(row["cfg"]))
    # The schedule's mean scale over the steps, as the moments engine's tilt takes it (qtm.sampler_map).
    tilt_scale = float(CFGSchedule.parse(row["schedule"]).mean_scale(
        cfg, steps, alphas_cumprod=DiffusionConfig().step_alphas(steps)[0]))
    return QGSetup(
        population=opts["population"], generations=PARAMETERS["iterations"].check(row["iterations"]),
        dims=opts["dims"], data_mean=opts["data_mean"], data_var=opts["data_var"],
        fitness=Fitness("tilt", cfg=tilt_scale), mutation=row["mutation"], resampling=opts["resampling"],
        real_fraction=row["real_fraction"], data_workflow=row["data_workflow"],
        finetune=Finetune(row["fidelity"], row["drop"], row["uncond_fidelity"], row["finetune"], **errors),
        **base,
    )


def _tasks(setups, opts) -> list[tuple[int, int, int]]:
    per_task = max(1, TASK_INDIVIDUALS // (opts["population"] * opts["dims"]))
    return [
        (p, offset, min(per_task, opts["replicates"] - offset))
        for p in range(len(setups))
        for offset in range(0, opts["replicates"], per_task)
    ]


def _work(setup, count) -> float:
    steps = setup.steps if isinstance(setup, ChainSetup) else 1
    length = setup.iterations if isinstance(setup, ChainSetup) else setup.generations
    return float(count) * setup.population * length * steps


def _connect(address, *, local: bool):
    """A Dask client for ``address``, a LocalCluster's when ``local``, or none (run in-process).

    A scheduler must answer within :data:`CONNECT_TIMEOUT_S` seconds and have a worker within
    :data:`WORKER_TIMEOUT_S` seconds; otherwise a one-line :class:`QTMError`.
    """
    if address is None and not local:
        return None, None
    import distributed

    if address is None:
        # The cluster's own logging (workers lost, tasks cancelled while closing) is not the user's business.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        with _quiet_workers():
            cluster = distributed.LocalCluster(n_workers=os.cpu_count(), threads_per_worker=1, processes=True,
                                               dashboard_address=None)
        return distributed.Client(cluster), cluster
    if "://" not in str(address) or str(address).startswith("tcp://"):
        _probe_scheduler(str(address))  # other transports (tls, ucx) need their security settings to talk
    try:
        client = distributed.Client(str(address), timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as error:
        raise _unreachable(address, error) from None
    try:
        client.wait_for_workers(1, timeout=WORKER_TIMEOUT_S)
    except (OSError, TimeoutError) as error:  # distributed's WorkerStartTimeoutError is a TimeoutError
        client.close()
        raise QTMError(
            f"the Dask scheduler at --cluster {address!r} has no worker after {WORKER_TIMEOUT_S} s "
            f"({type(error).__name__}); start workers (dask worker {address}) or leave --cluster out to run locally"
        ) from None
    return client, None


@contextlib.contextmanager
def _quiet_workers():
    """Worker processes started in the block ignore Ctrl-C and log only critical errors.

    Ctrl-C reaches the whole process group: only this process should hear it, close the cluster and say
    "interrupted" (the workers would print tracebacks). An ignored signal stays ignored in a started process, and
    each worker reads its log level from the environment as it starts.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    logging_variable = os.environ.get(_WORKER_LOGGING)
    os.environ[_WORKER_LOGGING] = "critical"
    try:
        yield
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, handler)
        if logging_variable is None:
            del os.environ[_WORKER_LOGGING]
        else:
            os.environ[_WORKER_LOGGING] = logging_variable


def _probe_scheduler(address: str) -> None:
    """Ask ``address`` who it is: a Dask scheduler answers at once, a silent listener would hang a Client."""
    import asyncio
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    # A refused connection fails at once here, where distributed's connect retries it for the whole timeout.
    try:
        socket.create_connection(parse_host_port(parse_address(address)[1]), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise _unreachable(address, error) from None

    async def identity():
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    def ask():
        return asyncio.run(asyncio.wait_for(identity(), CONNECT_TIMEOUT_S))

    # In a thread of its own: the caller may already run an event loop (a notebook).
    with ThreadPoolExecutor(1) as pool:
        try:
            answer = pool.submit(ask).result()
        except (OSError, TimeoutError, ValueError) as error:
            raise _unreachable(address, error) from None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise QTMError(f"--cluster {address!r} answers but is not a Dask scheduler; check the address")


def _unreachable(address, error: BaseException) -> QTMError:
    return QTMError(
        f"cannot reach the Dask scheduler at --cluster {address!r} within {CONNECT_TIMEOUT_S} s "
        f"({type(error).__name__}); check the address or leave --cluster out to run locally"
    )


def _run(tasks, setups, points, opts, client, writer, progress) -> None:
    remaining = np.bincount([p for p, _, _ in tasks], minlength=len(setups))
    done = 0

    def handle(task, frame):
        nonlocal done
        writer.write(frame)
        remaining[task[0]] -= 1
        if remaining[task[0]] == 0:
            done += 1
            if progress is not None:
                progress(done, len(setups))

    args = [(setups[p], points.iloc[p].to_dict(), opts["particle_model"], opts["seed"], offset, count)
            for p, offset, count in tasks]
    if client is None:
        for task, arg in zip(tasks, args, strict=True):
            handle(task, _task_rows(*arg))
        return
    window = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    pending = deque()
    for task, arg in zip(tasks, args, strict=True):
        pending.append((task, client.submit(_task_rows, *arg, threads=None if opts["cluster"] else 1,
                                            pure=False)))
        if len(pending) >= window:
            task_done, future = pending.popleft()
            handle(task_done, future.result())
    while pending:
        task_done, future = pending.popleft()
        handle(task_done, future.result())


def _task_rows(setup, point: dict, model: str, seed: int, offset: int, count: int,
               threads: int | None = None) -> pd.DataFrame:
    """Run one block of replicates of one grid point and return its tidy rows."""
    if threads is not None:
        import numba

        numba.set_num_threads(threads)
    if model == "sampler":
        result = simulate_chain(setup, replicates=count, seed=seed, replicate_offset=offset)
        data = setup.data
        data_mean, data_var = (data.means[0], data.variances[0]) if data.modes == 1 else (None, None)
    else:
        result = simulate_qg(setup, replicates=count, seed=seed, replicate_offset=offset)
        data_mean, data_var = setup.data_mean, setup.data_var
    reps, iters, dims = result.mean.shape
    shape = (reps, iters, dims)
    size = reps * iters * dims
    # None (uncond_fidelity's "drop x fidelity") becomes NaN, so that every chunk has one schema.
    frame = {name: np.repeat(np.asarray([np.nan if value is None else value],
                                        dtype=object if isinstance(value, str) else None), size)
             for name, value in point.items()}
    frame["replicate"] = np.broadcast_to(result.replicates[:, None, None], shape).ravel()
    frame["iteration"] = np.broadcast_to(np.arange(iters)[None, :, None], shape).ravel()
    frame["axis"] = np.broadcast_to(np.arange(dims)[None, None, :], shape).ravel()
    frame["mean"] = result.mean.ravel()
    frame["var"] = result.var.ravel()
    frame["total_var"] = np.broadcast_to(result.var.sum(axis=2)[..., None], shape).ravel()
    for j in range(result.occupancy.shape[2]):
        frame[f"occupancy_{j}"] = np.broadcast_to(result.occupancy[:, :, j, None], shape).ravel()
    if data_mean is None:
        w2 = np.full(shape[:2], np.nan)
    else:
        w2 = np.sqrt(((result.mean - data_mean) ** 2 + (np.sqrt(result.var) - np.sqrt(data_var)) ** 2).sum(2))
    frame["w2_to_data"] = np.broadcast_to(w2[..., None], shape).ravel()
    return pd.DataFrame(frame)


class _Writer:
    """Append tables to one .parquet (ParquetWriter, schema of the first chunk) or .csv file."""

    def __init__(self, path: Path, suffix: str, record: dict):
        self.path, self.suffix, self.record = path, suffix, record
        self.parquet = None
        self.schema = None
        self.header = True

    def write(self, frame: pd.DataFrame) -> None:
        if self.suffix == ".csv":
            frame.to_csv(self.path, mode="w" if self.header else "a", header=self.header, index=False)
            self.header = False
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.parquet is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            meta = dict(table.schema.metadata or {})
            meta[b"provenance"] = to_json(self.record, path=self.path).encode()
            self.schema = table.schema.with_metadata(meta)
            self.parquet = pq.ParquetWriter(self.path, self.schema)
        self.parquet.write_table(pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False))

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
