"""docs/deploy.md: every command it shows is one our parsers accept, and keygen writes what it says."""
from __future__ import annotations

import re
import shlex

from deploy_support import KEYGEN, REPO, START, WORKER, parse_command, run_keygen

DOC = REPO / 'docs' / 'deploy.md'


def _shell_commands():
    """Each command of the doc's bash blocks, continuation lines joined, comments dropped."""
    text = DOC.read_text(encoding='utf-8')
    for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
        joined = re.sub(r'\\\n\s*', ' ', block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith('#'):
                for part in re.split(r'\s*&&\s*', line):
                    yield shlex.split(part, comments=True)


def _our_commands():
    """(command, args) of every bert-serving-* call, also inside `docker run IMAGE ARGS`."""
    for argv in _shell_commands():
        if argv[0] in (START, WORKER, KEYGEN):
            yield argv[0], argv[1:]
        elif argv[:2] == ['docker', 'run']:
            image = next(i for i, a in enumerate(argv) if a.startswith('bert-serving:'))
            entrypoint = argv[argv.index('--entrypoint') + 1] if '--entrypoint' in argv else START
            yield entrypoint, argv[image + 1:]


def test_every_command_in_the_doc_parses(tmp_path):
    seen = set()
    for command, args in _our_commands():
        seen.add(command)
        if command == KEYGEN:
            directory, name = args
            target = tmp_path / directory.strip('/').replace('/', '_')
            run_keygen([str(target), name])
            assert (target / f'{name}.key').is_file() and (target / f'{name}.key_secret').is_file()
        else:
            parse_command([command, *args], f'docs/deploy.md: {command} {shlex.join(args)}')
    assert seen == {START, WORKER, KEYGEN}

