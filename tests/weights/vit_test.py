"""vosjax.weights.vit: DINO / INO ViT and DINOHead state_dicts -> vosjax modules."""

from math import erf

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.methods.ino import head as head_lib
from vosjax.models import vit as vit_lib
from vosjax.weights import layout, vit

DIM, DEPTH, HEADS, PATCH, GRID = 8, 2, 2, 4, 2
_gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))  # exact (erf) GELU


def vit_state(
    prefix: str = "", *, grid: int = GRID, depth: int = DEPTH, mask_token: bool = True, seed=0
) -> dict[str, np.ndarray]:
    """A released VisionTransformer's state_dict (torch names and layouts), random values."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)

    state = {"cls_token": r(1, 1, DIM)}
    if mask_token:
        state["mask_token"] = r(1, 1, DIM)
    state |= {
        "pos_embed": r(1, 1 + grid * grid, DIM),
        "patch_embed.proj.weight": r(DIM, 3, PATCH, PATCH),
        "patch_embed.proj.bias": r(DIM),
    }
    for i in range(depth):
        for name, shape in (
            ("norm1", (DIM,)),
            ("attn.qkv", (3 * DIM, DIM)),
            ("attn.proj", (DIM, DIM)),
            ("norm2", (DIM,)),
            ("mlp.fc1", (4 * DIM, DIM)),
            ("mlp.fc2", (DIM, 4 * DIM)),
        ):
            state[f"blocks.{i}.{name}.weight"] = r(*shape)
            state[f"blocks.{i}.{name}.bias"] = r(shape[0])
    state |= {"norm.weight": r(DIM), "norm.bias": r(DIM)}
    return {prefix + k: v for k, v in state.items()}


def head_state(
    prefix: str = "", *, layers: int = 3, parametrizations: bool = False, seed=1
) -> dict[str, np.ndarray]:
    """A released DINOHead(DIM, 6, nlayers=layers, hidden 5, bottleneck 3) state_dict."""
    rng = np.random.default_rng(seed)
    widths = [DIM] + [5] * (layers - 1) + [3]
    state = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        name = "mlp" if layers == 1 else f"mlp.{2 * i}"
        state[f"{name}.weight"] = rng.normal(size=(b, a)).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(size=(b,)).astype(np.float32)
    g = rng.normal(size=(6, 1)).astype(np.float32)  # random: must be honoured
    v = rng.normal(size=(6, 3)).astype(np.float32)
    if parametrizations:
        state["last_layer.parametrizations.weight.original0"] = g
        state["last_layer.parametrizations.weight.original1"] = v
    else:
        state["last_layer.weight_g"] = g
        state["last_layer.weight_v"] = v
    return {prefix + k: v for k, v in state.items()}


def tiny_vit(*, mask_token: bool = True, grid: int = GRID) -> vit_lib.VisionTransformer:
    return vit_lib.VisionTransformer(
        patch_size=PATCH,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        img_size=grid * PATCH,
        use_mask_token=mask_token,
        rngs=nnx.Rngs(0),
    )


def tiny_head(layers: int = 3) -> head_lib.ProjectionHead:
    return head_lib.ProjectionHead(
        DIM, hidden_dim=5, bottleneck_dim=3, out_dim=6, num_layers=layers, rngs=nnx.Rngs(0)
    )


def _load(state, model, prefix="", **kwargs):
    reader = layout.StateDictReader(state, "file.pth")
    vit.load_vit(reader, prefix, model, **kwargs)
    reader.finish()


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_every_tensor_lands_in_its_variable(prefix):
    state = vit_state(prefix)
    model = tiny_vit()
    _load(state, model, prefix)
    p = prefix
    np.testing.assert_array_equal(model.cls_token[...], state[p + "cls_token"][0])
    np.testing.assert_array_equal(model.mask_token[...], state[p + "mask_token"][0])
    np.testing.assert_array_equal(model.pos_embed[...], state[p + "pos_embed"][0])
    np.testing.assert_array_equal(
        model.patch_embed.kernel[...], state[p + "patch_embed.proj.weight"].transpose(2, 3, 1, 0)
    )
    block = model.blocks[1]
    np.testing.assert_array_equal(
        block.attn.qkv.kernel[...], state[p + "blocks.1.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(block.mlp.fc2.bias[...], state[p + "blocks.1.mlp.fc2.bias"])
    np.testing.assert_array_equal(block.norm2.scale[...], state[p + "blocks.1.norm2.weight"])
    np.testing.assert_array_equal(model.norm.bias[...], state[p + "norm.bias"])


def test_forward_matches_a_numpy_vit_from_the_torch_tensors():
    """One image through the imported ViT against the released forward written in numpy."""
    state = vit_state(seed=3)
    model = tiny_vit()
    _load(state, model)
    image = np.random.default_rng(4).normal(size=(1, GRID * PATCH, GRID * PATCH, 3))
    got = np.asarray(model(jnp.asarray(image, jnp.float32))["cls"][0])

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * state[f"{name}.weight"] + state[f"{name}.bias"]

    def lin(x, name):
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    w = state["patch_embed.proj.weight"]
    patches = image[0].reshape(GRID, PATCH, GRID, PATCH, 3).transpose(0, 2, 4, 1, 3)
    emb = patches.reshape(GRID * GRID, -1) @ w.reshape(DIM, -1).T + state["patch_embed.proj.bias"]
    x = np.concatenate([state["cls_token"][0], emb]) + state["pos_embed"][0]
    hd = DIM // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}"
        qkv = lin(ln(x, f"{b}.norm1"), f"{b}.attn.qkv").reshape(-1, 3, HEADS, hd)
        q, k, v = (qkv[:, j].transpose(1, 0, 2) for j in range(3))
        a = q @ k.transpose(0, 2, 1) * hd**-0.5
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + lin((a @ v).transpose(1, 0, 2).reshape(-1, DIM), f"{b}.attn.proj")
        x = x + lin(_gelu(lin(ln(x, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    np.testing.assert_allclose(got, ln(x, "norm")[0], rtol=1e-4, atol=1e-4)


def test_missing_tensor_is_named():
    state = vit_state()
    del state["blocks.1.attn.qkv.bias"]
    with pytest.raises(
        layout.WeightImportError, match=r"file\.pth: missing tensor 'blocks\.1\.attn\.qkv\.bias'"
    ):
        _load(state, tiny_vit())


def test_extra_tensor_is_named():
    state = vit_state() | {"blocks.0.attn.extra": np.zeros(3, np.float32)}
    with pytest.raises(
        layout.WeightImportError, match=r"unexpected tensor.*blocks\.0\.attn\.extra \(3,\)"
    ):
        _load(state, tiny_vit())


def test_an_extra_block_is_named():
    with pytest.raises(layout.WeightImportError, match=r"'blocks\.2\.norm1\.weight'.*has 2 blocks"):
        _load(vit_state(depth=3), tiny_vit())


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        (
            "blocks.0.mlp.fc1.weight",
            (4 * DIM, DIM + 1),
            r"'blocks\.0\.mlp\.fc1\.weight'.*\(9, 32\).*\(8, 32\)",
        ),
        ("cls_token", (1, 1, DIM + 2), r"'cls_token' has shape \(1, 1, 10\), expected \(1, 1, 8\)"),
        (
            "patch_embed.proj.weight",
            (DIM, 3, 8, 8),
            r"'patch_embed\.proj\.weight' has shape \(8, 3, 8, 8\), expected \(8, 3, 4, 4\)",
        ),
        (
            "pos_embed",
            (1, 7, DIM),
            r"'pos_embed' has shape \(1, 7, 8\), expected \(1, 1 \+ n \* n, 8\)",
        ),
    ],
)
def test_misshaped_tensor_names_both_shapes(name, shape, match):
    state = vit_state()
    state[name] = np.zeros(shape, np.float32)
    with pytest.raises(layout.WeightImportError, match=match):
        _load(state, tiny_vit())


def test_pos_embed_grid_of_the_checkpoint_is_adopted_or_refused():
    state = vit_state(grid=4)  # e.g. DINO's 224 grid into a model built for INO's 64
    model = tiny_vit(grid=GRID)
    with pytest.raises(
        layout.WeightImportError,
        match=r"4 x 4 position grid \(img_size 16.*2 x 2 grid \(img_size 8\)",
    ):
        _load(state, model, strict_grid=True)
    model = tiny_vit(grid=GRID)
    _load(state, model)
    np.testing.assert_array_equal(model.pos_embed[...], state["pos_embed"][0])
    # The forward pass reads the adopted grid: a 16 x 16 image is then not interpolated.
    out = model.prepare_tokens(jnp.zeros((1, 16, 16, 3)))
    bias = state["patch_embed.proj.bias"]
    np.testing.assert_allclose(out[0, 1:], state["pos_embed"][0, 1:] + bias, atol=1e-6)


def test_mask_token_skipped_without_one_and_kept_when_the_file_has_none():
    state = vit_state()
    model = tiny_vit(mask_token=False)
    _load(state, model)  # INO's mask token into an inference ViT: skipped, no error
    dino = vit_state(mask_token=False)
    model = tiny_vit()
    _load(dino, model)  # DINO's backbone has no mask token: the model's stays as initialised
    np.testing.assert_array_equal(model.mask_token[...], 0.0)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("parametrizations", [False, True])
def test_dino_head_matches_weight_norm_with_its_g(layers, parametrizations):
    state = head_state("head.", layers=layers, parametrizations=parametrizations)
    module = tiny_head(layers)
    reader = layout.StateDictReader(state, "file.pth")
    vit.load_dino_head(reader, "head.", module)
    reader.finish()
    x = np.random.default_rng(2).normal(size=(4, DIM)).astype(np.float32)
    h = x.astype(np.float64)
    for i in range(layers):
        name = "head.mlp" if layers == 1 else f"head.mlp.{2 * i}"
        h = h @ state[f"{name}.weight"].T + state[f"{name}.bias"]
        if i < layers - 1:
            h = _gelu(h)
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    names = (
        ("parametrizations.weight.original0", "parametrizations.weight.original1")
        if parametrizations
        else ("weight_g", "weight_v")
    )
    w = layout.weight_norm(
        state[f"head.last_layer.{names[0]}"], state[f"head.last_layer.{names[1]}"]
    )
    np.testing.assert_allclose(module(jnp.asarray(x)), h @ w.T, rtol=1e-4, atol=1e-5)
    # g is random (negative entries too): dropping it would change signs and scales.
    assert np.any(state[f"head.last_layer.{names[0]}"] < 0)


def test_dino_head_errors_name_the_tensor():
    state = head_state()
    state["last_layer.weight_v"] = np.zeros((6, 4), np.float32)
    reader = layout.StateDictReader(state, "file.pth")
    with pytest.raises(
        layout.WeightImportError,
        match=r"'last_layer\.weight_v' has shape \(6, 4\), expected \(6, 3\)",
    ):
        vit.load_dino_head(reader, "", tiny_head())
    state = head_state() | {"mlp.1.running_mean": np.zeros(5, np.float32)}  # a use_bn head
    reader = layout.StateDictReader(state, "file.pth")
    vit.load_dino_head(reader, "", tiny_head())
    with pytest.raises(layout.WeightImportError, match=r"mlp\.1\.running_mean"):
        reader.finish()
