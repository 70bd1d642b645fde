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

from memtrain.data.dataset import Dataset
from memtrain.data.idx import IDX_NAME, idx_labels_path
from memtrain.data.inputs import check_features, load_inputs
from memtrain.data.load import load_dataset
from memtrain.data.npzfile import HEADER_ROWS_ABOVE, header_rows, npz_headers
from memtrain.data.params import OUTPUTS
from memtrain.data.sources import SOURCE_FORMS, builtin_source

__all__ = ["HEADER_ROWS_ABOVE", "IDX_NAME", "OUTPUTS", "SOURCE_FORMS", "Dataset", "builtin_source", "check_features",
           "header_rows", "idx_labels_path", "load_dataset", "load_inputs", "npz_headers"]
