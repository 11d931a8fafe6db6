"""Every file and folder name of a run directory, in one place.

A run directory of the ``tl-vpd`` pipeline (:mod:`tl_vpd.pipeline`)::

    RUN/corpus/                       the tokenized default corpus (a cache; tl_vpd.data.corpus)
    RUN/target/                       the target, written by tl_vpd.target.train_target:
        config.json                       arguments of tl_vpd.target.target_config
        model.safetensors                 final weights
        curve.json                        [{"step", "tokens_seen", "val_ce"}, ...]
        tokenizer.json                    the corpus's tokenizer
        checkpoints/step_{k}.safetensors  weights at each evaluation
        checkpoints/state_{k}.pt          optimiser, data position and curve there (resume)
        target.yaml                       the pipeline's target-stage config
    RUN/decomp/                       the decomposition run, written by tl_vpd.decompose:
        run.json                          the run's identity (tl_vpd.run_dir)
        config.yaml                       the VPDConfig
        checkpoints/step_{k:07d}/         a saved decomposition + trainer_state.pt + manifest.json
        decomposition/                    the final decomposition (format: tl_vpd.io)
    RUN/eval.json                     the EvalReport (tl_vpd.report)

A saved decomposition's own files are named in :mod:`tl_vpd.io`; a cached corpus's in
:mod:`tl_vpd.data.corpus`.
"""

__all__ = [
    "CHECKPOINT_DIR",
    "CORPUS_DIR",
    "DECOMPOSITION_DIR",
    "DECOMP_CONFIG_FILE",
    "DECOMP_DIR",
    "EVAL_FILE",
    "MANIFEST_FILE",
    "RUN_FILE",
    "TARGET_CONFIG_FILE",
    "TARGET_CURVE_FILE",
    "TARGET_DIR",
    "TARGET_MODEL_FILE",
    "TARGET_STAGE_FILE",
    "TOKENIZER_FILE",
    "TRAINER_STATE_FILE",
]

# RUN/
CORPUS_DIR = "corpus"
TARGET_DIR = "target"
DECOMP_DIR = "decomp"
EVAL_FILE = "eval.json"

# RUN/target/
TARGET_CONFIG_FILE = "config.json"
TARGET_MODEL_FILE = "model.safetensors"
TARGET_CURVE_FILE = "curve.json"
TOKENIZER_FILE = "tokenizer.json"
TARGET_STAGE_FILE = "target.yaml"
CHECKPOINT_DIR = "checkpoints"  # in RUN/target/ and RUN/decomp/

# RUN/decomp/
DECOMP_CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"  # in each checkpoint directory
DECOMPOSITION_DIR = "decomposition"
TRAINER_STATE_FILE = "trainer_state.pt"
