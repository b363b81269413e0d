"""The README's headline table is the one benchmarks/report.py wrote last: same columns, the same headlines in
order, each with the command report.py runs for it now (a headline whose command changed needs a new report), and
the same block in docs/report.md."""

from __future__ import annotations

import re
import sys

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
try:
    import report
finally:
    sys.path.remove(str(REPO_ROOT / "benchmarks"))


def readme_block() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1, "the README needs one pair of report markers"
    return text.split(report.BEGIN, 1)[1].split(report.END, 1)[0].strip()


def test_the_readme_table_is_report_pys_table_for_the_current_headlines():
    block = readme_block()
    taken = re.match(r"Taken (\d{4}-\d\d-\d\d \d\d:\d\d) UTC on (.+) by `python benchmarks/report\.py`\.\n\n", block)
    assert taken, f"the block does not start with report.py's 'Taken <date> UTC on <machine>' line:\n{block[:300]}"
    assert "--smoke" not in taken.group(0), "the README holds a --smoke report (figures meaningless)"
    rows = report.table_rows(block[taken.end():])
    assert rows[0] == list(report.COLUMNS)
    body = rows[1:]
    assert [r[0] for r in body] == [h.what for h in report.HEADLINES], "headlines differ from report.py's: rerun it"
    for row, headline in zip(body, report.HEADLINES):
        cells = dict(zip(report.COLUMNS, row))
        assert cells["command"] == f"`{' '.join(('python', f'benchmarks/{headline.script}', *headline.args))}`", \
            f"{headline.what}: the README's command is not what report.py runs now; rerun python benchmarks/report.py"
        assert cells["conditions"].startswith(headline.conditions) and "load average" in cells["conditions"]
        assert cells["figure"] and cells["figure"] != "-" and not cells["figure"].startswith("- "), cells
    # report.py's own writer gives back the README's table from these cells: no hand edits in between
    results = [dict(zip(report.COLUMNS, row)) for row in body]
    assert report.headline_table(results) == block[taken.end():].strip()


def test_docs_report_holds_the_same_block_with_each_benchmarks_output():
    block = readme_block()
    details = (REPO_ROOT / "docs" / "report.md").read_text()
    assert block in details, "docs/report.md is not from the same report.py run as the README's table"
    for headline in report.HEADLINES:
        assert f"## {headline.what}" in details
