import pytest
import torch
from torch import nn

from ssal.layouts import Block, build_branch, parse_layout


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parse_defaults_and_args():
    blocks = parse_layout("cbr(128,5,2) cbr inception gap dense(768)")
    assert blocks == [
        Block("cbr", (128, 5, 2)),
        Block("cbr"),
        Block("inception"),
        Block("gap"),
        Block("dense", (768,)),
    ]
    assert str(blocks[0]) == "cbr(128,5,2)"
    assert parse_layout("") == []


def test_cbr_params_and_shape_by_hand():
    # cbr(128,5,2) on 256 channels: conv 256*128*25 (no bias), BN 2*128; linear 128*20+20
    branch = build_branch("cbr(128,5,2)", 256, 20)
    assert n_params(branch) == 256 * 128 * 25 + 2 * 128 + 128 * 20 + 20
    conv = branch[0][0]
    assert conv.stride == (2, 2) and conv.padding == (2, 2)
    assert branch(torch.randn(2, 256, 32, 32)).shape == (2, 20)


def test_default_cbr_is_256_3x3():
    conv = build_branch("cbr", 64, 3)[0][0]
    assert conv.out_channels == 256 and conv.kernel_size == (3, 3) and conv.stride == (1, 1)


def test_inception_block_by_hand():
    c = 128
    branch = build_branch("inception", c, 10)
    feats = branch[0](torch.randn(2, c, 8, 8))
    assert feats.shape == (2, 748, 8, 8)
    bn = lambda f: 2 * f  # noqa: E731
    expected = (
        c * 128
        + bn(128)
        + c * 128
        + bn(128)
        + 2 * (128 * 128 * 3 + bn(128))
        + c * 160
        + bn(160)
        + 160 * 128
        + bn(128)
        + 2 * (128 * 128 * 3 + bn(128))
        + c * 108 * 3
        + bn(108)
    )
    assert n_params(branch[0]) == expected


def test_imagenet_blocks_channels_and_unpadded_reduction():
    b = build_branch("inception_c inception_d inception_e inception_d inception_e(2)", 256, 7)
    x = torch.randn(1, 256, 28, 28)
    feats = b[:-2](x)
    assert feats.shape == (1, 1496, 6, 6)  # D: 28 -> (28 - 3) // 2 + 1 = 13 -> 6
    d = b[1]
    strided = [m for m in d.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 2 and all(m.padding == (0, 0) for m in strided)
    assert [m.padding for m in d.modules() if isinstance(m, nn.MaxPool2d)] == [0]
    pools = [m for m in b.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 3 and all(p.count_include_pad for p in pools)  # C and both E blocks


def test_average_pools_count_the_padding_only_in_the_imagenet_blocks():
    # a 3x3 average at the corner of a map of ones: 4/9 counting the zero padding, 1 without
    ones = torch.ones(1, 1, 4, 4)
    c = build_branch("inception_c(0.0625)", 1, 2)[0]
    cifar = build_branch("inception", 1, 2)[0]
    assert c.paths[3][0](ones)[0, 0, 0, 0].item() == pytest.approx(4 / 9)
    assert cifar.paths[3][0](ones)[0, 0, 0, 0].item() == 1.0


def test_styles_make_the_layers():
    keras = build_branch("keras: cbr(16,3) gap dense(8)", 4, 3)
    conv, bn = keras[0][0], keras[0][1]
    assert conv.bias is not None and torch.all(conv.bias == 0)
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)
    assert torch.all(keras[2][0].bias == 0) and torch.all(keras[3].bias == 0)
    limit = (6 / (16 + 8)) ** 0.5  # glorot_uniform on the dense layer
    assert keras[2][0].weight.abs().max() <= limit
    torch_style = build_branch("cbr(16,3)", 4, 3)
    assert torch_style[0][0].bias is None and torch_style[0][1].eps == 1e-5
    v3 = build_branch("inception-v3: cbr(256,3,2,0)", 256, 3)
    assert v3[0][0].padding == (0, 0) and v3[0][0].bias is None and v3[0][1].eps == 1e-3
    assert v3[0](torch.zeros(1, 256, 56, 56)).shape[-1] == 27
    assert parse_layout("keras: cbr(128,5,2) gap") == [Block("cbr", (128, 5, 2)), Block("gap")]
    assert build_branch("cbr(8,3)", 4, 3, style="keras")[0][0].bias is not None


def test_gap_added_and_dense_after_gap():
    b = build_branch("cbr(8,3) gap dense(16)", 4, 5)
    assert isinstance(b[-1], nn.Linear) and b[-1].in_features == 16
    b = build_branch("cbr(8,3)", 4, 5)  # gap appended automatically
    assert b(torch.randn(3, 4, 6, 6)).shape == (3, 5)


@pytest.mark.parametrize(
    "layout,match",
    [
        ("conv(3)", "unknown block 'conv'"),
        ("cbr(1,2,3,4,5)", "takes 0 to 4 arguments"),
        ("cbr(x)", "not a number"),
        ("cbr(1.5)", "must be an integer"),
        ("cbr(0)", "must be positive"),
        ("dense", "takes 1 to 1"),
        ("dense(10)", "put gap before it"),
        ("gap cbr", "comes after gap"),
        ("cbr((", "cannot read"),
        ("dropout(1.5)", r"\[0, 1\)"),
        ("cbr(8,3,1,-1)", "must be positive"),
        ("cbr(8,0)", "must be positive"),
        ("tf: cbr", "unknown style 'tf'"),
    ],
)
def test_layout_errors(layout, match):
    with pytest.raises(ValueError, match=match):
        build_branch(layout, 8, 3)


def test_inception_width_and_alignment():
    # the defaults are the paper's block; (1,8) pads the 108-channel path to 112 (752 out),
    # (1,32) to 128 (768 out); (0.5) halves every path: 64 + 128 + 128 + 54
    paper = build_branch("inception", 64, 5)[0]
    assert parse_layout("inception(1,8)") == [Block("inception", (1, 8))]
    for layout, channels in (("inception(1,8)", 752), ("inception(1,32)", 768)):
        block = build_branch(layout, 64, 5)[0]
        assert block(torch.randn(2, 64, 4, 4)).shape == (2, channels, 4, 4)
        # only the pooled path grows: its 3x1 conv (64 * 3 per channel) and batch norm
        extra = channels - 748
        assert n_params(block) - n_params(paper) == extra * (64 * 3 + 2)
    assert build_branch("inception(0.5)", 64, 5)[0](torch.randn(1, 64, 4, 4)).shape[1] == 374
    assert (
        build_branch("inception(0.4,8)", 64, 5)[0](torch.randn(1, 64, 4, 4)).shape[1] == 5 * 56 + 48
    )
    with pytest.raises(ValueError, match="must be an integer"):
        parse_layout("inception(1,2.5)")
    with pytest.raises(ValueError, match="0 to 3 arguments"):
        parse_layout("inception(1,8,1,1)")


def test_inception_with_one_stem_is_the_same_function():
    """inception(1,8,1) runs the three 1x1 convolutions on the input as one: with the
    weights copied over, it computes what inception(1,8) computes, in training and eval."""
    torch.manual_seed(0)
    paper = build_branch("inception(1,8)", 24, 5)[0]
    fused = build_branch("inception(1,8,1)", 24, 5)[0]
    assert n_params(fused) == n_params(paper)
    p1, p2, p3, p4 = paper.paths
    stems = [p1, p2.stem, p3.stem[0]]  # each a cbr: conv, batch norm, ReLU
    for i in (0, 1):  # the conv weight and the batch norm's parameters and statistics
        for name, t in fused.stems[i].state_dict().items():
            if name != "num_batches_tracked":
                t.copy_(torch.cat([s[i].state_dict()[name] for s in stems]))
    fused.asym2.load_state_dict(p2.split.state_dict())
    fused.reduce3.load_state_dict(p3.stem[1].state_dict())
    fused.asym3.load_state_dict(p3.split.state_dict())
    fused.pool.load_state_dict(p4.state_dict())
    x = torch.randn(4, 24, 6, 6)
    for train in (True, False):
        paper.train(train), fused.train(train)
        assert torch.allclose(fused(x), paper(x), atol=1e-5)
    with pytest.raises(ValueError, match="third argument"):
        build_branch("inception(1,8,2)", 24, 5)
