"""Mixture posteriors, barcode calls and cell types on hand-made neuron tables."""

import numpy as np
import pandas as pd
import pytest

from graph.annotate import (
    BarcodeConfig,
    CellTypeConfig,
    MixtureConfig,
    annotate_neurons,
    assign_cell_types,
    call_barcodes,
    fit_mixture,
    kmeans,
    mixture_posterior,
)
from pipeline.config import validate_config
from pipeline.errors import ConfigError, InputError
from pipeline.volume import Channel


def test_mixture_posterior_on_bimodal_data():
    rng = np.random.default_rng(0)
    low = np.exp(rng.normal(np.log(200), 0.2, 300))
    high = np.exp(rng.normal(np.log(2000), 0.4, 100))  # broader high component
    values = np.r_[low, high]
    fit = fit_mixture(values)
    assert fit.bimodal
    assert np.exp(fit.means[0]) == pytest.approx(200, rel=0.1)
    assert np.exp(fit.means[1]) == pytest.approx(2000, rel=0.1)
    assert fit.weights[1] == pytest.approx(0.25, abs=0.05)
    p = mixture_posterior(fit, values)
    assert np.mean(p[:300] < 0.5) > 0.98 and np.mean(p[300:] > 0.5) > 0.97
    # monotone in intensity, including the far tails
    grid = np.geomspace(1, 1e6, 400)
    pg = mixture_posterior(fit, grid)
    assert np.all(np.diff(pg) >= -1e-12)
    assert pg[0] < 1e-6 and pg[-1] > 1 - 1e-6


def test_mixture_unimodal_and_tiny_inputs():
    rng = np.random.default_rng(1)
    fit = fit_mixture(np.exp(rng.normal(5, 0.1, 200)))
    assert not fit.bimodal
    assert np.all(mixture_posterior(fit, [1.0, 1e9]) == 0.0)
    fit = fit_mixture([100, 101, 102, 100, 103], config=MixtureConfig(unimodal_call="high"))
    assert not fit.bimodal and np.all(mixture_posterior(fit, [5.0]) == 1.0)
    assert not fit_mixture([10.0, 1000.0]).bimodal  # fewer than min_neurons
    assert not fit_mixture(np.full(10, 7.0)).bimodal
    # few neurons, clearly two groups
    fit = fit_mixture([100, 110, 95, 1500, 1700])
    assert fit.bimodal
    assert (mixture_posterior(fit, [100, 110, 95, 1500, 1700]) > 0.5).tolist() == [0, 0, 0, 1, 1]


def _barcoded_neurons(n=40, k=6, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, (n, k))
    codes[0] = 0  # an all-off code
    codes[1] = codes[2]  # a shared code
    brightness = rng.uniform(0.6, 1.5, n)[:, None]  # per-neuron level
    values = np.where(codes, 3000.0, 150.0) * brightness * rng.uniform(0.9, 1.1, (n, k))
    neurons = pd.DataFrame({"neuron_id": np.arange(1, n + 1, dtype=np.uint64),
                            "size_voxels": rng.integers(100, 5000, n)})
    names = [f"bc{i:02d}" for i in range(k)]
    for i, name in enumerate(names):
        neurons[f"mean_{name}"] = values[:, i]
    truth = ["".join(map(str, row)) for row in codes]
    return neurons, names, truth


@pytest.mark.parametrize("config", [BarcodeConfig(), BarcodeConfig(normalize="max", confidence="min"),
                                    BarcodeConfig(mixture=MixtureConfig(weight_by_size=False))])
def test_barcode_call_exact_on_clean_neurons(config):
    neurons, names, truth = _barcoded_neurons()
    out = call_barcodes(neurons, names, config)
    if config.normalize == "max":  # an all-off code is undefined after max-normalisation
        some_on = [t != "000000" for t in truth]
        assert out["barcode"][some_on].tolist() == [t for t, s in zip(truth, some_on) if s]
    else:
        assert out["barcode"].tolist() == truth
    assert out["barcode_confidence"].between(0, 1).all()
    assert out["barcode_confidence"].median() > 0.9
    assert out["barcode_shared"].iloc[1] and out["barcode_shared"].iloc[2]
    assert out["barcode_shared"].sum() == pd.Series(out["barcode"]).duplicated(keep=False).sum()
    assert {f"p_{c}" for c in names} <= set(out.columns)
    assert "barcode" not in neurons.columns  # input untouched


def test_annotated_table_survives_parquet(tmp_path):
    neurons, names, truth = _barcoded_neurons(n=12, k=4)
    neurons.attrs["background"] = {n: 100.0 for n in names}
    out = call_barcodes(neurons, names)
    out.to_parquet(tmp_path / "neurons.parquet")  # attrs (fits, background) must be JSON-able
    back = pd.read_parquet(tmp_path / "neurons.parquet")
    assert back["barcode"].tolist() == out["barcode"].tolist()
    assert set(back.attrs["barcode_fits"]) == set(names)


def test_barcode_missing_channel_column():
    neurons, names, _ = _barcoded_neurons(n=5)
    with pytest.raises(InputError, match="bc99"):
        call_barcodes(neurons, names + ["bc99"])


def _typed_neurons():
    # vglut, vgat, pv means for hand-picked neurons
    table = [
        ("excitatory", 2000, 100, 90),
        ("excitatory", 1800, 120, 110),
        ("excitatory", 2500, 90, 100),
        ("inhibitory", 110, 2100, 100),
        ("inhibitory", 90, 1900, 130),
        ("pv", 100, 2000, 1800),
        ("pv", 120, 2300, 2200),
        ("pv", 95, 1700, 1600),
        ("none", 100, 110, 105),
    ]
    frame = pd.DataFrame(table, columns=["truth", "mean_vglut", "mean_vgat", "mean_pv"])
    frame.insert(0, "neuron_id", np.arange(1, len(frame) + 1, dtype=np.uint64))
    return frame


RULES = {
    "rules": [
        {"type": "pv", "require": {"vgat": "high", "pv": "high"}},
        {"type": "inhibitory", "require": {"vgat": "high"}},
        {"type": "excitatory", "require": {"vglut": "high"}},
    ],
    "default": "unknown",
}


def test_cell_type_rules_first_match_wins():
    neurons = _typed_neurons()
    out = assign_cell_types(neurons, ["vglut", "vgat", "pv"], RULES)
    expected = neurons["truth"].replace({"none": "unknown"}).tolist()
    assert out["cell_type"].tolist() == expected
    assert out["cell_type_confidence"].between(0, 1).all()
    assert out["cell_type_confidence"].iloc[:8].min() > 0.9
    # the config class and the YAML-style dict agree
    config = validate_config(CellTypeConfig, RULES)
    assert assign_cell_types(neurons, ["vglut", "vgat", "pv"], config)["cell_type"].tolist() == expected


def test_cell_type_low_requirement_and_default():
    neurons = _typed_neurons()
    rules = {"rules": [{"type": "vgat_only", "require": {"vgat": "high", "pv": "low"}}], "default": "other"}
    out = assign_cell_types(neurons, ["vglut", "vgat", "pv"], rules)
    assert out["cell_type"].tolist() == ["other"] * 3 + ["vgat_only"] * 2 + ["other"] * 4


def test_bad_rule_marker_is_a_config_error():
    neurons = _typed_neurons()
    rules = {"rules": [{"type": "sst", "require": {"sst": "high"}}]}
    with pytest.raises(ConfigError, match=r"'sst'.*\['vglut', 'vgat', 'pv'\]"):
        assign_cell_types(neurons, ["vglut", "vgat", "pv"], rules)
    with pytest.raises(ConfigError, match="require"):
        assign_cell_types(neurons, ["vglut"], {"rules": [{"type": "x", "require": {"vglut": "medium"}}]})


def test_clustering_without_rules():
    rng = np.random.default_rng(2)
    neurons = pd.concat([_typed_neurons().iloc[:8]] * 4, ignore_index=True)
    for c in ("mean_vglut", "mean_vgat", "mean_pv"):
        neurons[c] = neurons[c] * rng.uniform(0.9, 1.1, len(neurons))
    out = assign_cell_types(neurons, ["vglut", "vgat", "pv"])
    groups = out.groupby("truth")["cell_type"].agg(lambda s: set(s))
    assert all(len(g) == 1 for g in groups)  # each true type is one cluster
    assert len(set.union(*groups)) == 3
    assert set(out["cell_type"]) == {"cluster_0", "cluster_1", "cluster_2"}
    assert out["cell_type_confidence"].between(0, 1).all()
    again = assign_cell_types(neurons, ["vglut", "vgat", "pv"])
    assert again["cell_type"].tolist() == out["cell_type"].tolist()
    fixed = assign_cell_types(neurons, ["vglut", "vgat", "pv"], CellTypeConfig(n_clusters=2))
    assert fixed["cell_type"].nunique() == 2


def test_kmeans_separates_blobs():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))]
    labels, centers, _ = kmeans(x, 2, seed=0)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[-1]


def test_annotate_neurons_by_role():
    neurons, names, truth = _barcoded_neurons(n=30, k=4)
    typed = _typed_neurons()
    neurons = neurons.iloc[:9].copy()
    for c in ("mean_vglut", "mean_vgat", "mean_pv"):
        neurons[c] = typed[c].to_numpy()
    channels = [Channel(n, "barcode") for n in names] + [Channel(m, "marker") for m in ("vglut", "vgat", "pv")]
    out = annotate_neurons(neurons, channels, cell_types=RULES)
    assert out["cell_type"].tolist()[:8] == typed["truth"].tolist()[:8]
    assert out["barcode"].str.len().eq(4).all()


def _coded_neurons(n=32, k=8, seed=0):
    """Constant-weight codes (3 or 4 of k bits); channel bc00's off level scatters more than the others."""
    rng = np.random.default_rng(seed)
    codes = np.zeros((n, k), bool)
    for i in range(n):
        codes[i, rng.choice(k, 3 + i % 2, replace=False)] = True
    off = 150.0 * np.exp(rng.normal(0.0, 0.03, (n, k)))
    off[:, 0] = 150.0 * np.exp(rng.uniform(-0.15, 0.15, n))
    values = np.where(codes, 600.0 * rng.uniform(0.7, 1.3, (n, k)), off)
    return codes, values


def _table(values):
    names = [f"bc{i:02d}" for i in range(values.shape[1])]
    neurons = pd.DataFrame({f"mean_{c}": values[:, i] for i, c in enumerate(names)})
    neurons.insert(0, "neuron_id", np.arange(1, len(values) + 1, dtype=np.uint64))
    return neurons, names


def _strings(codes):
    return ["".join("1" if b else "0" for b in row) for row in codes]


def test_dim_bit_is_promoted_with_low_confidence():
    codes, values = _coded_neurons()
    codes[0] = False
    codes[0, [0, 2, 4, 6]] = True
    values[0] = np.where(codes[0], 600.0, 150.0)
    values[0, 0] = 150.0 + 0.12 * 450.0  # bc00 dropped out to 12 % of the on-off contrast
    neurons, names = _table(values)
    before = call_barcodes(neurons, names, BarcodeConfig(bits_on=(3, 4), dim_z=None))
    assert before["barcode"][0] == "00101010"  # a valid 3-bit code, but the dim bit is lost
    out = call_barcodes(neurons, names, BarcodeConfig(bits_on=(3, 4)))
    assert out["barcode"].tolist() == _strings(codes)  # the noisy channel's off bits are not promoted
    assert out["p_bc00"][0] < 0.5  # the channel posterior is kept...
    assert out["barcode_confidence"][0] < 0.5 < out["barcode_confidence"][1:].min()  # ...and shows in the confidence


def test_brighter_off_bit_swaps_with_a_dimmer_on_bit():
    codes, values = _coded_neurons(seed=1)
    codes[0] = False
    codes[0, [0, 1, 2, 3]] = True
    values[0] = np.where(codes[0], 600.0, 150.0)
    values[0, 0] = 150.0 + 0.12 * 450.0  # a dropped-out bit in the noisy channel bc00
    values[0, 5] = 150.0 * np.exp(0.2)  # bc05 a little above its tight off level
    neurons, names = _table(values)
    plain = call_barcodes(neurons, names, BarcodeConfig())
    assert plain["barcode"][0] == "01110100"  # channel by channel: bc05 on, bc00 off
    out = call_barcodes(neurons, names, BarcodeConfig(bits_on=(3, 4)))
    assert out["barcode"].tolist() == _strings(codes)  # bc00 stands higher in contrast units
    assert out["barcode_confidence"][0] < 0.5


def test_bits_on_leaves_clean_calls_unchanged():
    codes, values = _coded_neurons(seed=2)
    neurons, names = _table(values)
    plain = call_barcodes(neurons, names, BarcodeConfig())
    constrained = call_barcodes(neurons, names, BarcodeConfig(bits_on=(3, 4)))
    assert plain["barcode"].tolist() == _strings(codes) == constrained["barcode"].tolist()
    assert np.allclose(plain["barcode_confidence"], constrained["barcode_confidence"])
    with pytest.raises(Exception):
        BarcodeConfig(dim_z=0.0)


# Segments of a 128x384x384 sample with 54 neurons (benchmarks.quality --shape 128,384,384
# --neurons 54, seed 0): voxel counts and mean vglut. 51 are neurons (> 100 000 voxels), the
# rest small pieces of segmentation, some of them with extreme means.
PIECE_SIZES = [
    185368, 225126, 216951, 139173, 234601, 196306, 392498, 267527, 120299, 355833, 160690, 149353, 155934,
    166608, 499, 202742, 177869, 221260, 152699, 168830, 187331, 156965, 454, 169122, 225180, 221904, 176041,
    4212, 240579, 156582, 144460, 266921, 141745, 202682, 284826, 152939, 209849, 202051, 233288, 211180,
    134859, 217420, 203805, 199185, 156581, 881, 212726, 181035, 114193, 145154, 108163, 174837, 503, 225723,
    4825, 238892, 170, 1970, 157, 563, 120, 122, 239, 155, 209, 127, 124618, 190, 2793, 1105, 216, 352, 1394,
    147, 155, 122, 524, 218, 342, 247, 1429, 133, 168, 184, 167, 119, 1822, 155, 183, 141, 210, 1384, 177, 214,
    161, 1651, 2398, 419, 194, 181, 226, 257, 138, 241, 120,
]
PIECE_VGLUT = [
    133.1, 103.9, 134.8, 149.7, 106.1, 153.9, 117.4, 105.4, 103.8, 126.5, 107.0, 106.0, 150.2, 129.8, 357.8,
    107.6, 135.7, 143.7, 105.4, 104.0, 121.4, 104.4, 538.3, 161.5, 124.8, 103.2, 146.5, 102.3, 123.9, 104.4,
    133.1, 126.6, 137.8, 121.5, 142.6, 161.4, 118.8, 104.7, 121.0, 118.9, 106.7, 102.4, 121.8, 104.4, 165.7,
    107.3, 105.6, 126.4, 125.8, 149.6, 105.0, 104.5, 99.9, 104.0, 103.3, 124.2, 140.0, 104.6, 99.7, 106.2,
    100.2, 102.4, 146.3, 101.5, 100.1, 102.0, 105.1, 102.7, 101.0, 154.6, 104.4, 240.7, 104.9, 103.7, 103.0,
    104.7, 152.0, 101.0, 101.2, 477.8, 101.2, 100.4, 120.6, 102.8, 106.1, 101.3, 115.3, 645.1, 101.3, 168.3,
    183.3, 102.0, 630.9, 101.2, 99.2, 106.3, 106.3, 109.4, 164.8, 101.6, 119.7, 100.9, 125.4, 193.6, 134.0,
]


def test_small_pieces_with_extreme_means_do_not_hide_a_bimodal_marker():
    # Unweighted, the small pieces made the channel look unimodal and every excitatory
    # neuron "unknown"; weighted by size (the default) the neurons decide.
    table = pd.DataFrame({"neuron_id": np.arange(1, len(PIECE_SIZES) + 1, dtype=np.uint64),
                          "size_voxels": PIECE_SIZES, "mean_vglut": PIECE_VGLUT})
    table.attrs["background"] = {"vglut": 101.3}
    rules = {"rules": [{"type": "excitatory", "require": {"vglut": "high"}}], "default": "unknown"}
    neurons = table["size_voxels"].to_numpy() > 100_000
    high = table["mean_vglut"].to_numpy() > 112  # the neurons' values fall in 102-108 and 117-166
    weighted = assign_cell_types(table, ["vglut"], rules)
    assert weighted.attrs["marker_fits"]["vglut"]["bimodal"]
    np.testing.assert_array_equal(weighted["cell_type"].to_numpy()[neurons],
                                  np.where(high, "excitatory", "unknown")[neurons])
    unweighted = assign_cell_types(table, ["vglut"], {**rules, "mixture": {"weight_by_size": False}})
    assert not unweighted.attrs["marker_fits"]["vglut"]["bimodal"]


def test_barcodes_use_the_median_columns_and_fall_back_to_means(caplog):
    # medians say bit 1 is on for neuron 0; the means (pulled by spill) say otherwise
    rng = np.random.default_rng(3)
    n = 12
    on = rng.random((n, 2)) < 0.5
    on[0] = [False, True]
    median = np.where(on, 1000.0, 100.0) * rng.uniform(0.9, 1.1, (n, 2))
    mean = median.copy()
    mean[0, 1] = 100.0
    table = pd.DataFrame({"neuron_id": np.arange(1, n + 1, dtype=np.uint64), "size_voxels": 1000,
                          "mean_a": mean[:, 0], "mean_b": mean[:, 1],
                          "median_a": median[:, 0], "median_b": median[:, 1]})
    by_median = call_barcodes(table, ["a", "b"])
    by_mean = call_barcodes(table, ["a", "b"], BarcodeConfig(statistic="mean"))
    assert by_median["barcode"].iloc[0] == "01" and by_mean["barcode"].iloc[0] == "00"
    with caplog.at_level("WARNING", logger="graph.annotate"):
        fallback = call_barcodes(table.drop(columns=["median_a", "median_b"]), ["a", "b"])
    assert fallback["barcode"].tolist() == by_mean["barcode"].tolist()
    assert "median_<channel>" in caplog.text
    with pytest.raises(InputError, match="median_<channel>"):
        call_barcodes(table.drop(columns=["median_a", "mean_a"]), ["a", "b"])
