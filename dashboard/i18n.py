"""Wall-board texts in Japanese and English."""

from __future__ import annotations

from typing import Literal

Lang = Literal["ja", "en"]

TEXTS: dict[str, dict[Lang, str]] = {
    "good": {"ja": "良品数", "en": "Good"},
    "rate": {"ja": "実績/時", "en": "Rate /h"},
    "target": {"ja": "目標/時", "en": "Target /h"},
    "shift": {"ja": "シフト", "en": "Shift"},
    "no_shift": {"ja": "稼働中のシフトなし（直近{hours}時間）", "en": "No shift running (last {hours} h)"},
    "updated": {"ja": "更新", "en": "Updated"},
    "api_unreachable": {"ja": "APIに接続できません", "en": "API unreachable"},
    "store_unavailable": {"ja": "データベースに接続できません", "en": "Store unavailable"},
    "api_error": {"ja": "APIエラー", "en": "API error"},
    "last_data": {"ja": "表示は最終取得時点のデータです", "en": "showing the last data received"},
    "replay": {"ja": "再生", "en": "Replay"},
    "target_line": {"ja": "目標", "en": "Target"},
}


def t(key: str, lang: Lang, **kw: object) -> str:
    return TEXTS[key][lang].format(**kw)


def both(key: str) -> str:
    """Both languages, for when the board does not know its language yet."""
    return f"{TEXTS[key]['ja']} / {TEXTS[key]['en']}"
