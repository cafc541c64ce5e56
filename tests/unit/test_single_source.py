"""
One daemon table, one minion-id rule: nothing else in the repo may re-declare them.

``_utils/airflow_daemons.py`` is the table (daemon -> unit -> role -> probe) and the minion-id
rule. Everything else reads it: the module and runner in Python, the states through
``salt['airflow_health.daemons']()``, the reactor by handing raw values to the runner.

The scan covers every Python, SLS, Jinja, conf and YAML file of the repo except the table
itself, tests, docs and READMEs, and fails on

* a re-declared table: one literal (a list, tuple, set or dict; in SLS/Jinja a bracketed
  expression or a run of YAML scalar lines) that names 3 or more distinct daemons or units
  of the table. A state managing one unit, or a pair of them, is fine;
* a minion-id pattern: a regex character class of letters, digits, ``.`` and ``-`` (the
  shape of ``[A-Za-z0-9_.-]{1,128}``) followed by a quantifier.
"""
import ast
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TABLE_FILE = "_utils/airflow_daemons.py"
SUFFIXES = (".py", ".sls", ".jinja", ".conf", ".yaml", ".yml")
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "tests", "docs",
             "results", ".pytest_cache"}
THRESHOLD = 3


def _table():
    spec = importlib.util.spec_from_file_location("single_source_table", ROOT / TABLE_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TABLE = _table()
NAMES = {row["name"] for row in TABLE.DAEMONS} | {row["unit"] for row in TABLE.DAEMONS}


def _name_of(token):
    """The daemon/unit a token names (``airflow-worker.service`` -> ``airflow-worker``)."""
    if token.endswith(".service"):
        token = token[: -len(".service")]
    return token if token in NAMES else None


# ------------------------------------------------------------------ minion-id patterns
_CLASS = re.compile(r"\[(?P<body>[^\]\n]{2,40})\](?=[{+*])")


def _is_id_class(body):
    """A character class of exactly letters+digits (or \\w), '.', '-' and maybe '_'."""
    rest = body
    has = {}
    for part, key in ((r"\w", "w"), ("A-Z", "A"), ("a-z", "a"), ("0-9", "0"), (r"\d", "0"),
                      (r"\.", "."), (r"\-", "-"), ("_", "_"), (".", "."), ("-", "-")):
        if part in rest:
            has[key] = True
            rest = rest.replace(part, "")
    letters = has.get("w") or (has.get("A") and has.get("a"))
    digits = has.get("w") or has.get("0")
    return not rest and bool(letters and digits and has.get(".") and has.get("-"))


def minion_id_patterns(text):
    return [m.group(0) for m in _CLASS.finditer(text) if _is_id_class(m.group("body"))]


# ------------------------------------------------------------------ table re-declarations
def _python_literals(text):
    """Distinct daemon/unit names of each outermost container literal of a Python file."""
    found = []

    def strings(node):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                yield sub.value

    def visit(node):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            names = {n for n in map(_name_of, strings(node)) if n}
            found.append((node.lineno, names))
            return  # outermost only: nested literals count towards this one
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(text))
    return found


def _blank(match):
    return "".join(c if c == "\n" else " " for c in match.group(0))


def _strip_markup(text):
    """Comments (Jinja, YAML) blanked, Jinja delimiters blanked, line numbers kept."""
    text = re.sub(r"\{#.*?#\}", _blank, text, flags=re.S)
    text = re.sub(r"(?m)(^|\s)#.*$", _blank, text)
    text = re.sub(r"\{%-?|-?%\}", _blank, text)
    return re.sub(r"\{\{-?(.*?)-?\}\}", lambda m: "   " + m.group(1) + "   ", text, flags=re.S)


_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_OPEN, _CLOSE = "[({", "])}"


def _bracket_groups(text):
    """Outermost bracketed expressions (Jinja delimiters blanked): (line, text)."""
    groups, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch in _OPEN:
            if depth == 0:
                start = i
            depth += 1
        elif ch in _CLOSE and depth:
            depth -= 1
            if depth == 0:
                groups.append((text.count("\n", 0, start) + 1, text[start:i + 1]))
    return groups


_SCALAR_LINE = re.compile(r"^(?P<indent>\s*)(?:-\s+)?(?:[^\s:#][^:#]*:\s+)?(?P<value>[^\s#{].*)$")


def _yaml_runs(text):
    """Runs of consecutive YAML scalar lines at one indent (a block list or mapping): (line, text)."""
    runs, current, indent, first = [], [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        m = _SCALAR_LINE.match(line)
        if m and line.strip():
            if indent == len(m.group("indent")) and current:
                current.append(line)
                continue
            if current:
                runs.append((first, "\n".join(current)))
            current, indent, first = [line], len(m.group("indent")), number
        else:
            if current:
                runs.append((first, "\n".join(current)))
            current, indent = [], None
    if current:
        runs.append((first, "\n".join(current)))
    return runs


def _text_literals(text):
    text = _strip_markup(text)
    found = []
    for line, chunk in _bracket_groups(text) + _yaml_runs(text):
        names = {n for n in map(_name_of, _TOKEN.findall(chunk)) if n}
        found.append((line, names))
    return found


def table_redeclarations(path, text):
    literals = _python_literals(text) if path.suffix == ".py" else _text_literals(text)
    return [(line, sorted(names)) for line, names in literals if len(names) >= THRESHOLD]


# ------------------------------------------------------------------ the scan
def scanned_files():
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if set(rel.parts[:-1]) & SKIP_DIRS or not path.is_file() or path.is_symlink():
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        if rel.as_posix() == TABLE_FILE or rel.name.upper().startswith("README"):
            continue
        if path.suffix in SUFFIXES:
            yield rel, path


def test_the_scan_covers_the_healing_layer_and_the_states():
    files = {rel.as_posix() for rel, _ in scanned_files()}
    for expected in ("_runners/airflow.py", "_modules/airflow_health.py",
                     "_beacons/airflow_health.py", "_utils/airflow_decide.py",
                     "reactor/health.sls", "conf/master.d/airflow-reactor.conf",
                     "salt/airflow/map.jinja"):
        assert expected in files, expected
    assert any(f.startswith("salt/airflow/healing") for f in files)   # healing.sls or healing/
    assert TABLE_FILE not in files


def test_no_file_redeclares_the_daemon_table():
    offenders = []
    for rel, path in scanned_files():
        for line, names in table_redeclarations(path, path.read_text(errors="replace")):
            offenders.append(f"{rel}:{line}: {', '.join(names)}")
    assert not offenders, (
        "re-declared daemon table (read _utils/airflow_daemons.py instead: __utils__ in "
        "Python, salt['airflow_health.daemons']() in states):\n" + "\n".join(offenders))


def test_no_file_redeclares_the_minion_id_rule():
    offenders = []
    for rel, path in scanned_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern in minion_id_patterns(line):
                offenders.append(f"{rel}:{number}: {pattern}")
    assert not offenders, (
        "re-declared minion-id rule (use airflow_daemons.valid_minion_id):\n"
        + "\n".join(offenders))


# ------------------------------------------------------------------ the detectors themselves
@pytest.mark.parametrize("text,hit", [
    ("RE = re.compile(r'^[A-Za-z0-9_.-]{1,128}$')", True),
    ("'^([A-Za-z0-9_.-]{1,128})$'", True),
    (r"m = re.match(r'[\w.-]+', s)", True),
    ("[a-zA-Z0-9._-]*", True),
    ("UNIT_RE = r'^[A-Za-z0-9@_.-]{1,128}$'", False),     # unit names: not a minion id
    (r"BACKEND_RE = r'^[\w-]{1,64}$'", False),
    ("[a-z0-9-]+", False),
    ("x = data[0]", False),
])
def test_minion_id_detector(text, hit):
    assert bool(minion_id_patterns(text)) is hit


PY_TABLE = 'UNITS = {"worker": "airflow-worker", "scheduler": "airflow-scheduler"}\n'
PY_ROWS = ('T = ({"name": "worker"}, {"name": "flower"},\n'
           '     {"name": "haproxy"})\n')
PY_OK = ('if daemon == "scheduler":\n    unit = "airflow-scheduler"\n'
         'cands = {"api-server": 1, "dag-processor": 2}\n'
         'ROLES = ["airflow-db", "airflow-broker", "airflow-master", "airflow-worker"]\n')
SLS_LIST = "{%- set daemons = ['api-server', 'scheduler',\n  'dag-processor'] %}\n"
SLS_CHECKS = ("{%- set d = {'checks': {'airflow-master': ['api-server', 'scheduler', "
              "'triggerer']}} %}\n")
SLS_BLOCK = ("units:\n  - airflow-worker.service\n  - airflow-flower.service\n"
             "  - rabbitmq-server.service\n")
SLS_MAP = "x:\n  api-server: airflow-api-server\n  triggerer: airflow-triggerer\n"
SLS_OK = ("{%- for row in salt['airflow_health.daemons'](roles) %}\n"
          "airflow-{{ row.name }}-service:\n  service.running:\n    - name: {{ row.unit }}\n"
          "{%- endfor %}\n"
          "airflow-worker-unit:\n  file.managed:\n    - name: /etc/systemd/system/airflow-worker.service\n"
          "    - source: salt://airflow/files/airflow-daemon.service.jinja\n"
          "  service.running:\n    - name: airflow-worker\n    - watch:\n"
          "      - file: airflow-worker-unit\n"
          "{%- for role in ['airflow-db', 'airflow-broker', 'airflow-master', 'airflow-worker',"
          " 'airflow-flower', 'airflow-lb'] %}{% endfor %}\n"
          "tgt: 'G@roles:airflow-master or G@roles:airflow-worker or G@roles:airflow-flower'\n")


@pytest.mark.parametrize("suffix,text,hit", [
    (".py", PY_TABLE, True), (".py", PY_ROWS, True), (".py", PY_OK, False),
    (".sls", SLS_LIST, True), (".sls", SLS_CHECKS, True), (".sls", SLS_BLOCK, True),
    (".conf", SLS_MAP, True), (".sls", SLS_OK, False),
])
def test_table_detector(suffix, text, hit):
    assert bool(table_redeclarations(pathlib.Path("x" + suffix), text)) is hit
