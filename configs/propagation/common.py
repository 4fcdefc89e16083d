"""Fields shared by every propagation-evaluation config."""

import dataclasses

import ml_collections

from vosjax.ops import propagation

SMOKE = "smoke"


@dataclasses.dataclass(frozen=True)
class ConfigArg:
    preset: str = "dino"
    smoke: bool = False


def parse_arg(arg: str | None) -> ConfigArg:
    """Parses 'preset[,smoke]' (any order)."""
    preset, smoke = "dino", False
    for token in filter(None, (arg or "").split(",")):
        if token == SMOKE:
            smoke = True
        elif token in propagation.PRESETS:
            preset = token
        else:
            raise ValueError(
                f"config argument {token!r}: expected 'smoke' or a preset "
                f"{sorted(propagation.PRESETS)}"
            )
    return ConfigArg(preset=preset, smoke=smoke)


def data_config(smoke: bool) -> ml_collections.ConfigDict:
    """Where the evaluation videos come from; an empty davis_root means the synthetic default."""
    return ml_collections.ConfigDict(
        {
            "layout": "davis",  # 'davis' or 'youtube_vos'.
            "davis_root": "",
            "imageset": "2017/val",
            "resolution": "480p",
            "sequences": "",  # comma-separated subset; empty = the whole split.
            "youtube_vos_root": "",
            "youtube_vos_split": "valid",
            # The embedded default dataset, exported to the DAVIS-2017 layout on first use.
            "synthetic": {
                "num_val": 2 if smoke else 8,
                "num_frames": 6 if smoke else 30,
                "height": 64 if smoke else 240,
                "width": 96 if smoke else 427,
                "seed": 0,
                "level": "medium",
            },
        }
    )


def base_config(preset: str, smoke: bool) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.propagation = ml_collections.ConfigDict(
        dataclasses.asdict(propagation.PRESETS[preset]) | {"preset": preset}
    )
    config.data = data_config(smoke)
    config.eval = ml_collections.ConfigDict(
        {
            "write_pngs": True,
            "num_overlay_sequences": 2 if smoke else 4,  # overlay images in the summaries.
            "num_workers": 2,  # processes that score sequences while the next one is segmented.
        }
    )
    return config
