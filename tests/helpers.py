"""What tests share besides fixtures: the repo's paths, toy training sizes, the training and export configs as
the CLI composes them, real photos at a size, the realtime stylizer, GraphDef edits.

Test modules import it as `from helpers import ...`: pytest's default (prepend) import mode puts tests/
on sys.path when it loads tests/conftest.py, and a script run as `python tests/X.py` has it there too.
Fixtures stay in conftest.py.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONTENT_DIR = REPO / "data" / "samples" / "content"
STYLE_DIR = REPO / "data" / "samples" / "style"
# Pretrained weights are fetched once per machine into the repo's cache, shared by all tests.
CACHE_DIR = REPO / ".cache" / "stylepipe"


def tracking_uri(folder: Path) -> str:
    """`sqlite:///<folder>/mlflow.db`, an MLflow store with its tables made: copied from one made once per
    test process, as making them costs each new store about 2 s. A test of a new store's own creation
    names its store itself."""
    store = Path(folder) / "mlflow.db"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store(), store)
    return f"sqlite:///{store}"


@functools.cache
def _empty_store() -> Path:
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="stylepipe-test-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # makes the tables
    return folder / "mlflow.db"


# The training stage at toy sizes (the old smoke sizes), for tests of its plumbing; experiment=smoke
# itself is a real fine-tune (tests/test_magenta_import.py runs it as is).
TINY_TRAINING = ["trainer.batch_size=2", "data.image_size=64", "data.resize_short_side=[64,80]",
                 "data.style_size=64", "data.heldout_size=64"]


def compose_train(overrides: list[str], tmp_path: Path):
    """The training config as the CLI would compose it, writing only under tmp_path."""
    from hydra import compose, initialize_config_dir

    tmp_path.mkdir(parents=True, exist_ok=True)  # holds the sqlite store, which must be in an existing folder
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.root_dir={REPO}",
                f"paths.output_dir={tmp_path / 'outputs'}",
                f"paths.cache_dir={CACHE_DIR}",
                f"mlflow.tracking_uri={tracking_uri(tmp_path)}",
                "trainer.progress=false",
                *overrides,
            ],
        )


def compose_export(tmp_path: Path, model_path, overrides=()):
    """The export config as the CLI would compose it for `model_path`, writing only under tmp_path."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("export", overrides=[
            f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={CACHE_DIR}",
            f"mlflow.tracking_uri={tracking_uri(tmp_path)}", f"export.model_path={model_path}", *overrides])


def photo(height: int, width: int, name: str = "chelsea.jpg") -> np.ndarray:
    """A real photo fitted (scaled and centre-cropped) to height x width: (1, H, W, 3) float32 in [0, 1]."""
    from training.data.datasets import fit_crop, load_image

    return fit_crop(load_image(CONTENT_DIR / name), height, width)[None]


def random_bottleneck(seed: int) -> np.ndarray:
    """A style bottleneck (1, 1, 1, 100) of standard normal values."""
    return np.random.default_rng(seed).normal(size=(1, 1, 1, 100)).astype(np.float32)


# A style predictor that needs no download: MobileNetV2 without pretrained weights.
NO_WEIGHTS_BACKBONE = {"name": "mobilenet_v2", "weights": None, "trainable": False}


def realtime_stylizer(seed: int = 0, published_predictor: bool = False, **model_overrides):
    """A stylizer with the realtime transfer network as configs/model/realtime.yaml describes it (keys of
    `model_overrides` replaced), freshly initialised with `seed`; its style predictor Magenta's published
    one when `published_predictor`, else an untrained MobileNetV2."""
    import keras
    from omegaconf import OmegaConf

    from training.network.stylizer import build_stylizer
    from training.weights.magenta_import import (PUBLISHED_BACKBONE, PUBLISHED_PREDICTOR_INT8, import_predictor,
                                                 verified_path)

    keras.utils.set_random_seed(seed)
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "configs" / "model" / "realtime.yaml"), model_overrides)
    backbone = PUBLISHED_BACKBONE if published_predictor else NO_WEIGHTS_BACKBONE
    stylizer = build_stylizer(cfg, OmegaConf.create(backbone), CACHE_DIR)
    if published_predictor:
        published = verified_path(REPO / "models" / "magenta-published", PUBLISHED_PREDICTOR_INT8)
        import_predictor(stylizer.get_layer("style_predictor"), published)
    return stylizer


# ---- GraphDef edits (broken graphs for the Bender converter checks) ----

def graph_node(graph_def, name):
    return next(n for n in graph_def.node if n.name == name)


def copy_graph(graph_def):
    from tensorflow.core.framework import graph_pb2

    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    return out


def insert_after(graph_def, producer: str, node_def, extra_consts=()):
    """Insert node_def (reading `producer`) between producer and all its consumers, GraphDef order kept."""
    g = copy_graph(graph_def)
    for n in g.node:
        n.input[:] = [node_def.name if i == producer else i for i in n.input]
    index = next(i for i, n in enumerate(g.node) if n.name == producer) + 1
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:index] + list(extra_consts) + [node_def] + nodes[index:])
    return g


def const_node(name, value):
    import tensorflow as tf
    from tensorflow.core.framework import node_def_pb2

    nd = node_def_pb2.NodeDef(name=name, op="Const")
    nd.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    nd.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return nd


def op_node(name, op, inputs, dtype_attr="T"):
    from tensorflow.core.framework import node_def_pb2

    nd = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    nd.attr[dtype_attr].type = 1  # DT_FLOAT
    return nd
