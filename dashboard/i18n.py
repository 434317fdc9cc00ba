"""Dashboard texts, units and date/time formats in Japanese and English.

Names of the site, lines, machines and stop reasons come from the plant file through the API
(``?lang=``); everything the dashboard itself writes is here.
"""

from __future__ import annotations

from datetime import datetime
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
    "stale": {"ja": "データ途絶（最終 {time}）", "en": "no data since {time}"},
    "stale_never": {"ja": "データなし", "en": "no data"},
    "target_line": {"ja": "目標", "en": "Target"},
    "expected": {"ja": "現時点の目標", "en": "Expected by now"},
    "shift_target": {"ja": "シフト目標", "en": "Shift target"},
    "of_target": {"ja": "計画 {expected} / シフト {shift}", "en": "plan {expected} / shift {shift}"},
    "ahead_by": {"ja": "{n} 個 先行", "en": "ahead by {n}"},
    "behind_by": {"ja": "{n} 個 遅れ", "en": "behind by {n}"},
    "on_target": {"ja": "計画どおり", "en": "on target"},
    "oee": {"ja": "OEE", "en": "OEE"},
    "availability": {"ja": "稼働率", "en": "Availability"},
    "performance": {"ja": "性能", "en": "Performance"},
    "quality": {"ja": "良品率", "en": "Quality"},
    "a_short": {"ja": "稼", "en": "A"},
    "p_short": {"ja": "性", "en": "P"},
    "q_short": {"ja": "質", "en": "Q"},
    "since": {"ja": "{time} から", "en": "since {time}"},
    "machines": {"ja": "設備", "en": "Machines"},
    "board": {"ja": "全体", "en": "Board"},
    "line_view": {"ja": "ライン詳細", "en": "Line view"},
    "machine_view": {"ja": "設備詳細", "en": "Machine view"},
    "throughput_per": {"ja": "良品数（{bucket}ごと）と目標", "en": "Good per {bucket} vs target"},
    "cumulative": {"ja": "累計実績と計画", "en": "Cumulative actual vs plan"},
    "actual": {"ja": "実績", "en": "Actual"},
    "plan": {"ja": "計画", "en": "Plan"},
    "state_timeline": {"ja": "稼働状態", "en": "State timeline"},
    "downtime_pareto": {"ja": "停止時間パレート（理由別）", "en": "Downtime Pareto by reason"},
    "oee_by_hour": {"ja": "時間別OEE", "en": "OEE by hour"},
    "gauge_history": {"ja": "{name} の推移", "en": "{name} history"},
    "mean": {"ja": "平均", "en": "Mean"},
    "min_max": {"ja": "最小〜最大", "en": "Min–max"},
    "minutes": {"ja": "分", "en": "min"},
    "pieces": {"ja": "個", "en": "pcs"},
    "cumulative_share": {"ja": "累積比率", "en": "Cumulative share"},
    "no_downtime": {"ja": "停止なし", "en": "No downtime"},
    "no_gauges": {"ja": "この設備にはアナログ信号がありません", "en": "This machine has no gauges"},
    "unknown_line": {"ja": "ライン {id} はありません", "en": "No line {id}"},
    "unknown_machine": {"ja": "設備 {id} はありません", "en": "No machine {id}"},
    "window": {"ja": "表示期間", "en": "Window"},
    "hour_bucket": {"ja": "1時間", "en": "hour"},
    "bucket_15m": {"ja": "15分", "en": "15 min"},
    "no_data": {"ja": "データなし", "en": "no data"},
    # the operator page (/operator/<line>)
    "operator_view": {"ja": "作業者入力", "en": "Operator input"},
    "no_operator_token": {"ja": "このダッシュボードには作業者トークンがありません："
                                "--operator-token-file を付けて起動してください",
                          "en": "This dashboard has no operator token: start it with --operator-token-file"},
    "stops_to_name": {"ja": "停止（理由を選ぶ停止をタップ）", "en": "Stops (tap the one to name)"},
    "no_stops": {"ja": "理由の未入力の停止はありません", "en": "No stop waits for a reason"},
    "open_stop": {"ja": "停止中", "en": "stopped now"},
    "reason_for": {"ja": "停止理由", "en": "Stop reason"},
    "select_stop_first": {"ja": "先に停止を選んでください", "en": "Select a stop first"},
    "named": {"ja": "{machine} {time} からの停止を「{reason}」にしました",
              "en": "{machine}: the stop since {time} is now “{reason}”"},
    "scrap_entry": {"ja": "不良の計上", "en": "Book scrap"},
    "scrap_reason": {"ja": "不良理由（任意）", "en": "Reason (optional)"},
    "book": {"ja": "計上", "en": "Book"},
    "clear": {"ja": "クリア", "en": "Clear"},
    "quantity": {"ja": "数量", "en": "Quantity"},
    "enter_quantity": {"ja": "数量を入力してください", "en": "Enter a quantity"},
    "select_machine": {"ja": "設備を選んでください", "en": "Select a machine"},
    "booked": {"ja": "{machine} に不良 {n} 個を計上しました", "en": "Booked {n} scrap on {machine}"},
    "shift_notes": {"ja": "シフトメモ", "en": "Shift notes"},
    "no_notes": {"ja": "メモはまだありません", "en": "No notes yet"},
    "save": {"ja": "保存", "en": "Save"},
    "note_saved": {"ja": "メモを保存しました", "en": "Note saved"},
    "note_empty": {"ja": "メモが空です", "en": "The note is empty"},
    "none": {"ja": "なし", "en": "none"},
    "refused": {"ja": "受け付けられませんでした", "en": "Refused"},
    # the printable shift report (dashboard/report.py)
    "r_title": {"ja": "日報", "en": "Shift report"},
    "r_printed": {"ja": "印刷 {time}", "en": "Printed {time}"},
    "r_so_far": {"ja": "シフト途中（{time} 時点）", "en": "Shift still running: so far, as of {time}"},
    "r_good": {"ja": "良品", "en": "Good"},
    "r_scrap": {"ja": "不良", "en": "Scrap"},
    "r_plan": {"ja": "計画", "en": "Plan"},
    "r_shift_plan": {"ja": "シフト計画", "en": "Shift plan"},
    "r_difference": {"ja": "差", "en": "Difference"},
    "r_time_base": {"ja": "時間", "en": "Time base"},
    "r_losses": {"ja": "ロス", "en": "Losses"},
    "r_machines": {"ja": "設備別", "en": "Machines"},
    "r_machine": {"ja": "設備", "en": "Machine"},
    "r_hours": {"ja": "時間別", "en": "Hour by hour"},
    "r_hour": {"ja": "時間", "en": "Hour"},
    "r_cum_good": {"ja": "累計良品", "en": "Cum. good"},
    "r_cum_plan": {"ja": "累計計画", "en": "Cum. plan"},
    "r_top_stops": {"ja": "主な停止", "en": "Longest stops"},
    "r_start": {"ja": "開始", "en": "Start"},
    "r_duration": {"ja": "時間", "en": "Duration"},
    "r_reason": {"ja": "理由", "en": "Reason"},
    "r_category": {"ja": "分類", "en": "Category"},
    "r_named_by": {"ja": "入力者", "en": "Named by"},
    "r_notes": {"ja": "連絡事項", "en": "Operator notes"},
    "r_author": {"ja": "記入者", "en": "By"},
    "r_none": {"ja": "なし", "en": "None"},
    "r_calendar": {"ja": "暦時間", "en": "Calendar"},
    "r_scheduled": {"ja": "計画時間", "en": "Scheduled"},
    "r_breaks": {"ja": "休憩", "en": "Breaks"},
    "r_planned": {"ja": "計画停止（休憩含む）", "en": "Planned stops (incl. breaks)"},
    "r_ppt": {"ja": "負荷時間", "en": "Planned production"},
    "r_run": {"ja": "稼働時間", "en": "Run time"},
    "r_breakdowns": {"ja": "故障", "en": "Breakdowns"},
    "r_changeover": {"ja": "段取り", "en": "Changeover"},
    "r_idle": {"ja": "待機（自設備）", "en": "Idle (own)"},
    "r_micro_stops": {"ja": "チョコ停", "en": "Micro-stops"},
    "r_reduced_speed": {"ja": "速度低下", "en": "Reduced speed"},
    "r_rejects": {"ja": "不良", "en": "Rejects"},
    "r_offline": {"ja": "データなし", "en": "Offline (no data)"},
    "r_starved_blocked": {"ja": "前後工程待ち", "en": "Starved / blocked"},
    "r_output": {"ja": "（出来高）", "en": "(output)"},
}

STATE_NAMES: dict[str, dict[Lang, str]] = {
    "running": {"ja": "稼働", "en": "Running"},
    "idle": {"ja": "待機", "en": "Idle"},
    "down": {"ja": "故障停止", "en": "Down"},
    "changeover": {"ja": "段取り", "en": "Changeover"},
    "planned": {"ja": "計画停止", "en": "Planned stop"},
    "offline": {"ja": "通信なし", "en": "Offline"},
}

_WEEKDAYS_JA = "月火水木金土日"


def t(key: str, lang: Lang, **kw: object) -> str:
    return TEXTS[key][lang].format(**kw)


def both(key: str) -> str:
    """Both languages, for when the board does not know its language yet."""
    return f"{TEXTS[key]['ja']} / {TEXTS[key]['en']}"


def state_name(state: str, lang: Lang) -> str:
    return STATE_NAMES.get(state, {}).get(lang, state)


def fmt_int(v: float | None) -> str:
    """A count, rounded, with thousands separators (the same in both languages); '—' for none."""
    return "—" if v is None else f"{round(v):,}"


def fmt_pct(v: float | None) -> str:
    """A ratio as a percentage with one decimal; '—' when there is no data (never 100 %)."""
    return "—" if v is None else f"{v * 100:.1f}%"


def fmt_duration(seconds: float, lang: Lang) -> str:
    """How long a state has lasted: ``16分50秒`` / ``16m 50s``, from an hour on ``2時間05分`` / ``2h 05m``
    (never ``16:50``, which a reader across the room takes for a clock time)."""
    s = max(int(seconds), 0)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if lang == "ja":
        return f"{h}時間{m:02d}分" if h else f"{m}分{sec:02d}秒"
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


def fmt_time(d: datetime) -> str:
    return f"{d:%H:%M}"


def fmt_datetime(d: datetime, lang: Lang) -> str:
    """The header clock: ``2026年11月27日(金) 10:30:00`` or ``Fri 27 Nov 2026 10:30:00`` (``d`` in plant time)."""
    if lang == "ja":
        return f"{d.year}年{d.month}月{d.day}日({_WEEKDAYS_JA[d.weekday()]}) {d:%H:%M:%S}"
    return f"{d:%a} {d.day} {d:%b %Y %H:%M:%S}"


def fmt_difference(difference: float, lang: Lang) -> str:
    """``behind by 41`` / ``41 個 遅れ``: the shift's actual against the target by now, rounded."""
    n = round(difference)
    if n == 0:
        return t("on_target", lang)
    return t("ahead_by" if n > 0 else "behind_by", lang, n=f"{abs(n):,}")
