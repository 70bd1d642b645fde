"""Datasets for training jobs: load, check, split, standardize, lay labels out.

`load_dataset(source, ...)` turns a source string (digits, an IDX/.npz/.csv
file, or a synthetic benchmark set) into a `Dataset` whose arrays are ready
for `Trainer.attach_data`: X C-contiguous in the model dtype, labels in the
layout `MLP.prepare_labels` wants for the output unit. Every problem with the
data is a one-line ValueError naming the file, the field and what was
expected (DESIGN section 5: failure is an input), raised before any training
memory is allocated.

One module per idea: a reader per format (`npzfile`, `csvfile`, `idx`, `digits`,
`synthetic`) behind `sources`; `checks` and `labels` on the arrays as read; `split`
and `standardize`; `load` puts them in order; `inputs` reads a saved model's inputs.
This facade names what the rest of memtrain uses.
"""

from __future__ import annotations

from memtrain.lazy import lazy_attributes

# name -> the module that defines it, imported on first use (PEP 562): `memtrain train` of the
# bundled digits reads no .npz, CSV or IDX file and so imports none of their readers (issue 22,
# a small job's start-up)
_WHERE = {name: f"memtrain.data.{module}" for name, module in {
    "Dataset": "dataset", "IDX_NAME": "idx", "idx_labels_path": "idx", "check_features": "inputs",
    "load_inputs": "inputs", "load_dataset": "load", "HEADER_ROWS_ABOVE": "npzfile", "header_rows": "npzfile",
    "npz_headers": "npzfile", "OUTPUTS": "params", "SOURCE_FORMS": "sources", "builtin_source": "sources",
}.items()}

__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
