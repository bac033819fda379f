"""Data layer: sources (tables, built-ins, images, volumes...), splits, encoders, dataset shapes."""

from .base import ExampleSet, InputSpec, MultiTaskData, PerTaskData, SharedInputData, iter_task_batches
from .sources import LoadedData, build_data, register_source, sources

__all__ = [
    "ExampleSet", "InputSpec", "LoadedData", "MultiTaskData", "PerTaskData", "SharedInputData",
    "build_data", "iter_task_batches", "register_source", "sources",
]
