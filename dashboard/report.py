"""The printable shift report (日報): the report JSON of ``GET /api/v1/reports/shift`` as one HTML page.

Used by the dashboard's ``/report/<date>/<shift>`` route and by ``mieruka report`` (which prints it to PDF
with headless Chromium), so the screen and the paper show the same thing. A4 landscape, one page per
line, black on white; no scripts, no external fonts or files (Japanese prints with the system's Noto
CJK fonts). Every text that comes from the API is escaped.

How figures are printed (the README's "Shift report" says the same): counts as whole numbers with
thousands separators (``1,234``); ratios as ``OEE 72.4 %`` (one decimal, a space before ``%``; ``—``
when there is no data); plan and targets rounded to whole parts; times of day ``HH:MM`` in plant time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from dashboard.i18n import Lang, fmt_duration, state_name, t

PAGE_CSS = """
@page { size: A4 landscape; margin: 9mm 10mm; }
* { box-sizing: border-box; }
html, body { margin: 0; padding: 0; background: #fff; color: #000; }
body { font-family: "Noto Sans CJK JP", "Noto Sans JP", "Noto Sans", "DejaVu Sans", sans-serif; font-size: 8.6pt;
       line-height: 1.25; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.sheet { break-after: page; page-break-after: always; }
.sheet:last-child { break-after: auto; page-break-after: auto; }
@media screen {
  body { background: #ddd; padding: 6mm 0; }
  .sheet { background: #fff; width: 297mm; min-height: 210mm; margin: 0 auto 6mm; padding: 9mm 10mm;
           box-shadow: 0 0 2mm rgba(0, 0, 0, .3); }
}
header { display: flex; justify-content: space-between; align-items: flex-end; border-bottom: 0.6mm solid #000;
         padding-bottom: 1.5mm; margin-bottom: 2.5mm; }
h1 { font-size: 15pt; margin: 0; }
h1 .line { font-size: 17pt; margin-left: 3mm; }
.meta { text-align: right; font-size: 8.5pt; }
.so-far { display: inline-block; border: 0.4mm solid #000; padding: 0.4mm 2mm; font-weight: bold; margin-top: 1mm; }
.kpis { display: flex; gap: 3mm; margin-bottom: 3mm; }
.kpi { border: 0.3mm solid #000; padding: 1.2mm 2.5mm; font-size: 11pt; white-space: nowrap; }
.kpi.main { font-size: 14pt; font-weight: bold; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 5mm; }
h2 { font-size: 9.5pt; margin: 2mm 0 1mm; border-left: 1.2mm solid #000; padding-left: 1.5mm; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 0.2mm solid #555; padding: 0.5mm 1.2mm; vertical-align: top; }
th { background: #eee; font-weight: bold; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: bold; border-top: 0.5mm solid #000; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 3mm; }
.empty { color: #333; font-style: italic; }
"""

_LOSSES = ("breakdowns_s", "changeover_s", "idle_s", "micro_stops_s", "reduced_speed_s", "rejects_s", "offline_s",
           "starved_blocked_s")
_TIMES = (("calendar_s", "r_calendar"), ("scheduled_s", "r_scheduled"), ("breaks_s", "r_breaks"),
          ("planned_s", "r_planned"), ("planned_production_s", "r_ppt"), ("run_s", "r_run"))
_WEEKDAYS_JA = "月火水木金土日"


def pct(v: float | None) -> str:
    """A ratio as printed in the report: ``72.4 %``; ``—`` when there is none (no data is never 100 %)."""
    return "—" if v is None else f"{v * 100:.1f} %"


def count(v: int | float | None) -> str:
    """A count (or a plan, rounded to whole parts) with thousands separators."""
    return "—" if v is None else f"{round(v):,}"


def minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:,.1f}"


def _e(v: object) -> str:
    return escape(str(v), quote=True)


def _time(text: str, tz: ZoneInfo) -> datetime:
    return datetime.fromisoformat(text).astimezone(tz)


def _date(d: datetime, lang: Lang) -> str:
    if lang == "ja":
        return f"{d.year}年{d.month}月{d.day}日({_WEEKDAYS_JA[d.weekday()]})"
    return f"{d:%a} {d.day} {d:%b %Y}"


def _table(head: Sequence[tuple[str, bool]], rows: Iterable[Sequence[str]], cls: Sequence[str] = ()) -> str:
    """A table; ``head`` is (text, numeric) per column; cells are HTML already escaped."""
    ths = "".join(f'<th class="n">{h}</th>' if num else f"<th>{h}</th>" for h, num in head)
    body = []
    for i, r in enumerate(rows):
        tds = "".join(f'<td class="n">{c}</td>' if head[j][1] else f"<td>{c}</td>" for j, c in enumerate(r))
        row_cls = f' class="{cls[i]}"' if i < len(cls) and cls[i] else ""
        body.append(f"<tr{row_cls}>{tds}</tr>")
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kpis(ln: Mapping[str, Any], lang: Lang) -> str:
    c, f = ln["counts"], ln["figures"]
    diff = round(float(c["difference"]))
    return (f'<div class="kpis">'
            f'<div class="kpi main good">{_e(t("r_good", lang))} {count(c["good"])}</div>'
            f'<div class="kpi">{_e(t("r_plan", lang))} {count(c["target"])}</div>'
            f'<div class="kpi">{_e(t("r_difference", lang))} {diff:+,}</div>'
            f'<div class="kpi">{_e(t("r_scrap", lang))} {count(c["scrap"])}</div>'
            f'<div class="kpi main oee">OEE {pct(f["oee"])}</div>'
            f'<div class="kpi">{_e(t("availability", lang))} {pct(f["availability"])}</div>'
            f'<div class="kpi">{_e(t("performance", lang))} {pct(f["performance"])}</div>'
            f'<div class="kpi">{_e(t("quality", lang))} {pct(f["quality"])}</div>'
            f'</div>')


def _machines(ln: Mapping[str, Any], lang: Lang) -> str:
    head = [(_e(t("r_machine", lang)), False), (_e(t("r_good", lang)), True), (_e(t("r_scrap", lang)), True),
            (_e(t("a_short", lang)), True), (_e(t("p_short", lang)), True), (_e(t("q_short", lang)), True),
            ("OEE", True), (_e(f'{t("r_breakdowns", lang)} ({t("minutes", lang)})'), True)]
    rows = []
    for m in ln["machines"]:
        f = m["figures"]
        name = _e(m["name"]) + (f" {_e(t('r_output', lang))}" if m["output"] else "")
        rows.append([name, count(m["counts"]["good"]), count(m["counts"]["scrap"]), pct(f["availability"]),
                     pct(f["performance"]), pct(f["quality"]), pct(f["oee"]), minutes(f["losses"]["breakdowns_s"])])
    return f'<h2>{_e(t("r_machines", lang))}</h2>{_table(head, rows)}'


def _time_base(ln: Mapping[str, Any], lang: Lang) -> str:
    times = ln["figures"]["times"]
    rows = [[_e(t(key, lang)), minutes(times[k])] for k, key in _TIMES]
    return (f'<div><h2>{_e(t("r_time_base", lang))}</h2>'
            f'{_table([("", False), (_e(t("minutes", lang)), True)], rows)}</div>')


def _losses(ln: Mapping[str, Any], lang: Lang) -> str:
    losses = ln["figures"]["losses"]
    rows = [[_e(t("r_" + k.removesuffix("_s"), lang)), minutes(losses[k])] for k in _LOSSES]
    return (f'<div><h2>{_e(t("r_losses", lang))}</h2>'
            f'{_table([("", False), (_e(t("minutes", lang)), True)], rows)}</div>')


def _hours(ln: Mapping[str, Any], lang: Lang, tz: ZoneInfo, w0: datetime, w1: datetime) -> str:
    """The hourly table; each hour shown clipped to the report's window (the first and last may be cut)."""
    head = [(_e(t("r_hour", lang)), False), (_e(t("r_good", lang)), True), (_e(t("r_scrap", lang)), True),
            (_e(t("r_plan", lang)), True), (_e(t("r_cum_good", lang)), True), (_e(t("r_cum_plan", lang)), True),
            (_e(t("r_difference", lang)), True)]
    rows = []
    for h in ln["hours"]:
        span = f'{max(_time(h["start"], tz), w0):%H:%M}–{min(_time(h["end"], tz), w1):%H:%M}'
        rows.append([span, count(h["good"]), count(h["scrap"]), count(h["target"]), count(h["cumulative_good"]),
                     count(h["cumulative_target"]), f'{round(h["cumulative_good"] - h["cumulative_target"]):+,}'])
    c = ln["counts"]
    rows.append([_e(t("r_good", lang) + " / " + t("r_plan", lang)), count(c["good"]), count(c["scrap"]),
                 count(c["target"]), "", "", f'{round(float(c["difference"])):+,}'])
    return f'<h2>{_e(t("r_hours", lang))}</h2>' + _table(head, rows, [""] * (len(rows) - 1) + ["total"])


def _stops(ln: Mapping[str, Any], lang: Lang, tz: ZoneInfo) -> str:
    title = f'<h2>{_e(t("r_top_stops", lang))}</h2>'
    if not ln["top_stops"]:
        return title + f'<p class="empty">{_e(t("no_downtime", lang))}</p>'
    head = [(_e(t("r_start", lang)), False), (_e(t("r_machine", lang)), False), (_e(t("r_duration", lang)), True),
            (_e(t("r_reason", lang)), False), (_e(t("r_named_by", lang)), False)]
    rows = []
    for s in ln["top_stops"]:
        reason = _e(s["label"])
        if s["reason"] is not None and s["label"] != state_name(s["state"], lang):
            reason += f' <span class="state">({_e(state_name(s["state"], lang))})</span>'
        rows.append([f'{_time(s["start"], tz):%H:%M}', _e(s["machine_name"]), _e(fmt_duration(s["seconds"], lang)),
                     reason, _e(s["named_by"] or "—")])
    return title + _table(head, rows)


def _notes(ln: Mapping[str, Any], lang: Lang, tz: ZoneInfo) -> str:
    title = f'<h2>{_e(t("r_notes", lang))}</h2>'
    if not ln["notes"]:
        return title + f'<p class="empty">{_e(t("r_none", lang))}</p>'
    head = [(_e(t("r_hour", lang)), False), (_e(t("r_author", lang)), False), (_e(t("r_notes", lang)), False)]
    rows = [[f'{_time(n["time"], tz):%H:%M}', _e(n.get("author") or "—"), _e(n["text"])] for n in ln["notes"]]
    return title + _table(head, rows)


def render_report(report: Mapping[str, Any], lang: Lang, printed_at: datetime) -> str:
    """The whole report as one HTML document: a sheet per line (A4 landscape when printed)."""
    tz = ZoneInfo(str(report["site"]["timezone"]))
    shift = report["shift"]
    start, end = _time(shift["start"], tz), _time(shift["end"], tz)
    w0, w1 = _time(report["start"], tz), _time(report["end"], tz)
    day = datetime.fromisoformat(f'{report["date"]}T12:00:00')
    title = (f'{_e(report["site"]["name"])} {_e(t("r_title", lang))} — {_e(_date(day, lang))} '
             f'{_e(shift["name"])}')
    meta = [f'{_e(shift["name"])} {start:%H:%M}–{end:%H:%M}',
            _e(t("r_printed", lang, time=f"{printed_at.astimezone(tz):%Y-%m-%d %H:%M}"))]
    if not report["complete"]:
        so_far = t("r_so_far", lang, time=f"{_time(report['end'], tz):%H:%M}")
        meta.append(f'<span class="so-far">{_e(so_far)}</span>')
    sheets = []
    for ln in report["lines"]:
        sheets.append(
            f'<section class="sheet" data-line="{_e(ln["id"])}">'
            f'<header><h1>{title}<span class="line">{_e(ln["name"])}</span></h1>'
            f'<div class="meta">{"<br>".join(meta)}</div></header>'
            f'{_kpis(ln, lang)}'
            f'<div class="cols"><div>{_machines(ln, lang)}<div class="pair">{_time_base(ln, lang)}'
            f'{_losses(ln, lang)}</div></div>'
            f'<div>{_hours(ln, lang, tz, w0, w1)}{_stops(ln, lang, tz)}{_notes(ln, lang, tz)}</div></div>'
            f'</section>')
    return (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{title}</title><style>{PAGE_CSS}</style></head>'
            f'<body>{"".join(sheets)}</body></html>')


def error_page(status: int, detail: str, lang: Lang) -> str:
    """What the report route shows when the API refuses or cannot answer: the API's sentence, escaped."""
    return (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{status}</title>'
            f'<style>{PAGE_CSS}</style></head><body><section class="sheet"><h1>{_e(t("r_title", lang))}: '
            f'{status}</h1><p class="detail">{_e(detail)}</p></section></body></html>')
