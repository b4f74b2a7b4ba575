"""Analytic FLOP counts of the training step: every convolution and matrix product, from its shapes.

Counted on the JAX trace (jaxpr) of each part's forward pass at a fixed image size, so the shapes
are the ones the network really computes: a convolution costs 2 * output elements * (kernel
height * width * input channels per group), a matrix product 2 * M * N * K. Element-wise work
(normalisation, activations, padding) is left out, as in the usual model-FLOP-utilisation (MFU)
convention. Backward: a trainable layer costs 2x its forward (input and weight gradients), a frozen
layer that gradients pass through 1x (input gradients only), a frozen layer at the start of the
graph 0x. Needs KERAS_BACKEND=jax.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _product(shape) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64))


def eqn_flops(eqn) -> int:
    """FLOPs of one jaxpr equation: a convolution or a matrix product; 0 for anything else."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out = eqn.outvars[0].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
        per_output = int(rhs[spec[1]]) * _product([rhs[d] for d in spec[2:]])
        return 2 * _product(out) * per_output
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2 * _product(eqn.outvars[0].aval.shape) * _product([lhs[d] for d in lhs_contract])
    return 0


def iter_eqns(jaxpr):
    """Every equation of a (closed) jaxpr, including those of nested calls (jit, remat, custom_vjp)."""
    from jax.extend.core import ClosedJaxpr, Jaxpr

    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, (Jaxpr, ClosedJaxpr)):
                    yield from iter_eqns(sub)


def jaxpr_flops(jaxpr) -> int:
    """Convolution and matrix-product FLOPs of a (closed) jaxpr, including nested calls."""
    return sum(eqn_flops(eqn) for eqn in iter_eqns(jaxpr))


def forward_flops(fn, *example_inputs) -> int:
    """FLOPs of one call of `fn` (a Keras model or function) on inputs of these shapes."""
    import jax

    return jaxpr_flops(jax.make_jaxpr(lambda *args: fn(*args))(*example_inputs))


@dataclass
class StepFlops:
    """FLOPs per training image at one image size, by part; `total` is forward + backward."""

    transfer_forward: int
    predictor_backbone_forward: int
    predictor_head_forward: int
    loss_network_forward: int  # the stylized image through VGG-16, to the deepest content or style layer
    style_target_forward: int  # the style image through VGG-16, to the deepest style layer
    content_target_forward: int  # the content image through VGG-16, to the deepest content layer
    gram_forward: int  # the style layers' Gram matrices of one image (stylized and style image each)
    predictor_backbone_trainable: bool
    style_targets_fixed: bool = False  # computed once per style (trainer.fixed_style_targets), not per image

    @property
    def forward(self) -> int:
        style_targets = 0 if self.style_targets_fixed else self.style_target_forward + self.gram_forward
        return (self.transfer_forward + self.predictor_backbone_forward + self.predictor_head_forward
                + self.loss_network_forward + self.content_target_forward + self.gram_forward + style_targets)

    @property
    def backward(self) -> int:
        # Transfer network and predictor head: trainable. VGG-16 and the Gram matrices: input
        # gradients for the stylized image only (the targets are constants); F^T F has the one
        # input F, whose gradient F (G + G^T) is one product of the forward's size. The backbone:
        # trainable (Inception, fine-tuned) or frozen at the start of the graph (MobileNetV2).
        backbone = 2 * self.predictor_backbone_forward if self.predictor_backbone_trainable else 0
        return (2 * self.transfer_forward + 2 * self.predictor_head_forward + backbone
                + self.loss_network_forward + self.gram_forward)

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def as_dict(self) -> dict:
        return {**asdict(self), "forward": self.forward, "backward": self.backward, "total": self.total}


def step_flops(objective, image_size: int) -> StepFlops:
    """Per-image FLOPs of `objective` (a StylizationObjective) training on image_size^2 crops.

    The model's own FLOPs: convolutions count as plain ones even where training runs them on
    pixel blocks (trainer.space_to_depth_channels), which does more multiply-adds.
    """
    from training.network.layers import plain_convolutions

    with plain_convolutions(objective.stylizer, objective.loss_network):
        return _step_flops(objective, image_size)


def _step_flops(objective, image_size: int) -> StepFlops:
    import jax.numpy as jnp

    from training.objective.losses import gram_matrix
    from training.network.vgg16 import vgg_features

    stylizer = objective.stylizer
    predictor = stylizer.get_layer("style_predictor")
    transformer = stylizer.get_layer("transformer")
    backbone = next(l for l in predictor.layers if l.name.startswith("backbone_"))
    image = jnp.full((1, image_size, image_size, 3), 0.5, jnp.float32)
    vgg_flops = lambda layers: forward_flops(lambda x: vgg_features(objective.loss_network, x, layers), image)  # noqa: E731
    bottleneck = predictor(image)
    content_layers, style_layers = objective.content_weights, objective.style_weights
    features = vgg_features(objective.loss_network, image, style_layers)
    predictor_total = forward_flops(predictor, image)
    backbone_flops = forward_flops(backbone, image)
    # The style-parameter 1x1 convs live in the transfer network; they run once per example too.
    return StepFlops(
        transfer_forward=forward_flops(lambda c, b: transformer([c, b]), image, bottleneck),
        predictor_backbone_forward=backbone_flops,
        predictor_head_forward=predictor_total - backbone_flops,
        loss_network_forward=vgg_flops({**content_layers, **style_layers}),
        style_target_forward=vgg_flops(style_layers),
        content_target_forward=vgg_flops(content_layers),
        gram_forward=sum(forward_flops(gram_matrix, features[k]) for k in style_layers),
        predictor_backbone_trainable=bool(backbone.trainable and backbone.trainable_weights),
        style_targets_fixed=objective.style_gram_table is not None,
    )


def training_step_flops_traced(objective, batch_size: int, image_size: int) -> int:
    """Cross-check: the conv/matmul FLOPs of the whole traced gradient step (plain convolutions), per image."""
    import jax
    import jax.numpy as jnp
    from keras import ops

    from training.network.layers import plain_convolutions

    trainable = [v.value for v in objective.trainable_variables]
    non_trainable = [v.value for v in objective.non_trainable_variables]
    shape = (batch_size, image_size, image_size, 3)
    batch = {"content": jnp.full(shape, 0.5, jnp.float32), "style": jnp.full(shape, 0.25, jnp.float32)}
    if objective.style_gram_table is not None:  # as training's batches: targets from the fixed table
        batch["style_index"] = jnp.zeros((batch_size,), jnp.int32)

    def loss(trainable, non_trainable, batch):
        out, _ = objective.stateless_call(trainable, non_trainable, batch, training=True)
        return ops.cast(objective.compute_loss(y_pred=out), "float32")

    with plain_convolutions(objective.stylizer, objective.loss_network):
        return jaxpr_flops(jax.make_jaxpr(jax.grad(loss))(trainable, non_trainable, batch)) // batch_size
