"""What ``make bench`` prints: one summary table (the one a docs page quotes), the goals, the details.

Every function here reads the ``figures`` dict that ``benchmarks.compare`` fills and saves as JSON;
a figure that a run skipped (``--no_onnx``, ``--no_bf16``, ``--no_encode_cli``, ``--no_floor``,
``--no_alone``) prints as ``n/a``, and its goals are neither met nor missed.
"""
from __future__ import annotations

from typing import List, Optional

from .timing import PAUSE_SECONDS

__all__ = ['BOUNDS', 'GOALS', 'SUMMARY_HEADER', 'evaluate_goals', 'format_report', 'goal_target', 'summary_rows']

# (key, label, figure it reads, comparison, target)
GOALS = [
    ('b_over_a', '(b) one client / (a) sentence-transformers', 'ratio_b_over_a', '>=', 1.3),
    # Issue 21, goals 1 and 2: one sentence near ONNX Runtime, many small clients near one big call.
    ('c_over_b', '(c) concurrent clients / (b) one client', 'ratio_c_over_b', '>=', 0.8),
    ('d_p50', '(d) p50 service / sentence-transformers', 'ratio_d_p50', '<=', 0.4),
    ('d_p50_onnx', '(d) p50 service / ONNX Runtime', 'ratio_d_p50_onnx', '<=', 1.2),
    ('b_over_onnx', '(b) one client / ONNX Runtime batch 32', 'ratio_b_over_onnx', '>=', 1.2),
    ('worker_rss', '(e) largest worker RSS after the runs, MiB', 'max_worker_rss_mb', '<=', 700.0),  # issue 21, goal 4
    ('other_rss', '(e) largest ventilator/sink/proxy RSS, MiB', 'max_other_rss_mb', '<=', 100.0),
    ('e_startup', '(e) second server start-up, s', 'second_start_s', '<=', 10.0),
    ('cosine', 'vectors: min cosine vs sentence-transformers', 'min_cosine', '>=', 0.999),
    # Issue 21, goal 3: the reduced-precision path ahead of ONNX Runtime int8, at bf16 accuracy.
    ('bf16_over_int8', '(j) -bf16 one client / ONNX Runtime int8 batch 32', 'ratio_bf16_over_int8', '>=', 1.5),
    ('bf16_p50_int8', '(j) -bf16 p50 / ONNX Runtime int8 p50', 'ratio_bf16_p50_over_int8', '<=', 1.0),
    ('bf16_cosine', '(j) -bf16 vectors: min cosine vs our fp32', 'bf16_min_cosine', '>=', 0.999),
    ('bf16_c_over_b', '(j) -bf16 concurrent clients / one client', 'ratio_bf16_c_over_b', '>=', 0.8),
    # The same for -fp16 (bfloat16 inside on such CPUs, float16 out): make bench ARGS=-fp16 runs the first
    # server with it, and its vectors meet sentence-transformers' in the cosine goal above.
    ('b_int8', '(b) ARGS -fp16 or -bf16: one client / ONNX Runtime int8', 'ratio_b_over_int8', '>=', 1.5),
    ('d_p50_int8', '(d) ARGS -fp16 or -bf16: p50 / ONNX Runtime int8 p50', 'ratio_d_p50_over_int8', '<=', 1.0),
    # Issue 22: the console command streams a corpus about as fast as one call holding all of it.
    ('encode_cli', '(i) bert-serving-encode / one encode of the same lines', 'ratio_encode_cli_over_b', '>=', 0.95),
    ('encode_cli_vectors', '(i) bert-serving-encode vectors: max |diff| vs one encode', 'encode_cli_max_abs_diff',
     '<=', 1e-5),
]


# (l) The best each service goal could measure if the service around the model cost nothing: the
# same ratio with the model alone in its own process (benchmarks.compare.derive_ratios). A goal whose
# bound misses its target is out of reach on this machine, whatever the service does.
BOUNDS = {
    'c_over_b': 'bound_c_over_b',
    'd_p50': 'bound_d_p50',
    'd_p50_onnx': 'bound_d_p50_onnx',
    'bf16_p50_int8': 'bound_bf16_p50_over_int8',
    'bf16_c_over_b': 'bound_bf16_c_over_b',
    'd_p50_int8': 'bound_d_p50_over_int8',
}


def goal_target(key: str) -> float:
    """The target of the goal ``key`` in GOALS."""
    return next(target for k, _, _, _, target in GOALS if k == key)


def evaluate_goals(figures: dict) -> List[dict]:
    """The goals with the measured value and PASS / MISS (``pass`` None when the figure is missing),
    and, where (l) gives one, the ``bound`` and whether it meets the target (``reachable``; None
    without a bound)."""
    def meets(value, op, target):
        return None if value is None else (value >= target if op == '>=' else value <= target)

    out = []
    for key, label, figure, op, target in GOALS:
        value, bound = figures.get(figure), figures.get(BOUNDS.get(key, ''))
        out.append({'goal': key, 'label': label, 'figure': figure, 'measured': value, 'target': f'{op} {target:g}',
                    'pass': meets(value, op, target), 'bound': bound, 'reachable': meets(bound, op, target)})
    return out


def _table(header: List[str], body: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + body]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def _measured(figure: str, value: Optional[float]) -> str:
    """A goal's measured value: a cosine to 6 places (0.9990 and 0.9989996 differ), a tiny difference
    in e-notation, the rest to 3 places."""
    if value is None:
        return 'n/a'
    if 'cosine' in figure:
        return f'{value:.6f}'
    if value != 0 and abs(value) < 0.01:
        return f'{value:.1e}'
    return f'{value:.3f}'


SUMMARY_HEADER = ['', 'one client sent/s', '{clients} clients x 1 sentence sent/s (/ one client)', 'single p50 ms',
                  'min cosine vs fp32', 'worker RSS MiB']


def summary_rows(figures: dict) -> List[List[str]]:
    """The summary table's rows: (a) sentence-transformers, ONNX Runtime fp32 and int8, ours fp32
    and -bf16, with one-client throughput, many one-sentence clients (and their share of one client),
    single-sentence p50, minimum cosine against the fp32 reference and worker RSS; then (k), the
    service with a model that takes no time."""
    f = figures

    def rate(key):
        return 'n/a' if f.get(key) is None else f'{f[key]:.0f}'

    def crowd(key, one_key):
        if f.get(key) is None:
            return 'n/a'
        share = f' ({f[key] / f[one_key]:.2f})' if f.get(one_key) else ''
        return f'{f[key]:.0f}{share}'

    def p50(key):
        return 'n/a' if not f.get(key) else f'{f[key]["p50_ms"]:.2f}'

    def cosine(key, against):
        return 'n/a' if f.get(key) is None else f'{f[key]:.6f} (vs {against})'

    def rss(value):
        return 'n/a' if value is None else f'{value:.0f}'

    workers = f.get('num_worker', 1)
    ours = f'{workers} worker' + ('s' if workers != 1 else '')
    first = f.get('precision', 'fp32')
    return [
        ['(a) sentence-transformers, batch 32', rate('a_sentences_per_s'), '-', p50('st_latency'),
         'reference', '-'],
        ['(f) ONNX Runtime fp32, sorted batch 32', rate('onnx_sentences_per_s'), '-', p50('onnx_latency'),
         cosine('onnx_min_cosine', '(a)'), '-'],
        ['(f) ONNX Runtime int8, sorted batch 32', rate('onnx_int8_sentences_per_s'), '-', p50('onnx_int8_latency'),
         cosine('onnx_int8_min_cosine', 'ORT fp32'), '-'],
        [f'(b-d) ours {first}, {ours}', rate('b_sentences_per_s'), crowd('c_sentences_per_s', 'b_sentences_per_s'),
         p50('service_latency'), cosine('min_cosine', '(a)'), rss(f.get('max_worker_rss_mb'))],
        [f'(j) ours -bf16, {ours}', rate('bf16_b_sentences_per_s'),
         crowd('bf16_c_sentences_per_s', 'bf16_b_sentences_per_s'), p50('bf16_latency'),
         cosine('bf16_min_cosine', f'ours {first}'), rss(f.get('bf16_max_worker_rss_mb'))],
        ['(k) service floor: -engine fake, no model', '-', rate('floor_c_sentences_per_s'), p50('floor_latency'),
         '-', '-'],
    ]


def format_report(figures: dict, goals: List[dict]) -> str:
    """The summary table, the goals table, then every figure in detail, as printed."""
    f = figures
    clients, sentences = f.get('clients', 32), f.get('sentences', 4096)

    def num(key, fmt='{:.0f}', unit=''):
        return 'n/a' if f.get(key) is None else fmt.format(f[key]) + unit

    def rss(key):
        return '; '.join(f'{name.split()[0]} {m["rss_mb"]:.0f} MiB (peak {m["peak_mb"]:.0f}'
                         + (f', anonymous {m["anon_mb"]:.0f}, files {m["file_mb"]:.0f}' if m.get('anon_mb') else '') + ')'
                         for name, m in f.get(key, {}).items()) or 'n/a'

    def latency(key):
        p = f.get(key)
        return f'{p["p50_ms"]:.1f} / {p["p99_ms"]:.1f} ms' if p else 'n/a'

    def cosines(key_min, key_mean):
        return f'min {f[key_min]:.6f}, mean {f[key_mean]:.6f}' if f.get(key_min) is not None else 'n/a'

    gemm = f.get('gemm_gflops')

    def roofline(key):
        if f.get(key) is None or gemm is None or f.get('tokens') is None:
            return 'n/a'
        if key == 'b_sentences_per_s' and f.get('precision', 'fp32') != 'fp32':
            return f'n/a ({f["precision"]}: not float32 GEMMs)'
        gflops = f[key] / f['sentences'] * f['tokens'] * f['flop_per_token'] / 1e9
        return f'{gflops:.0f} GFLOP/s = {gflops / gemm:.0%} of the GEMM rate'

    onnx = f'ONNX Runtime {f.get("onnx_version", "")}'.rstrip()
    pause = f'{PAUSE_SECONDS * 1e3:.0f} ms'
    rows = [
        ['(a) sentence-transformers, in-process, batch 32', num('a_sentences_per_s', unit=' sentences/s')],
        [f'(f) {onnx} fp32, in-process, length-sorted batch 32', num('onnx_sentences_per_s', unit=' sentences/s')],
        [f'(f) {onnx} int8 (quantize_dynamic, QInt8 weights), length-sorted batch 32',
         num('onnx_int8_sentences_per_s', unit=' sentences/s')],
        [f'(b) service, 1 client, {sentences} in one encode (best)', num('b_sentences_per_s', unit=' sentences/s')],
        [f'(c) service, {clients} clients, 1 sentence/request', num('c_sentences_per_s', unit=' sentences/s')],
        [f'(g) HTTP /v1/embeddings, {clients} clients, 1 sentence/request',
         num('g_http_sentences_per_s', unit=' sentences/s')],
        [f'(i) {f.get("encode_cli_command", "bert-serving-encode")}, {sentences} lines of a file (best)',
         num('encode_cli_sentences_per_s', unit=' sentences/s')],
        ['(i) one encode of the same lines, alternated with it (best)',
         num('encode_cli_b_sentences_per_s', unit=' sentences/s')],
        ['(i) worker CPU for one run: bert-serving-encode / one encode (least)',
         'n/a' if f.get('encode_cli_worker_cpu_s') is None else
         f'{f["encode_cli_worker_cpu_s"]:.2f} / {f["encode_cli_b_worker_cpu_s"]:.2f} s'],
        [f'(j) -bf16 service, 1 client, {sentences} in one encode (best)',
         num('bf16_b_sentences_per_s', unit=' sentences/s')],
        [f'(j) -bf16 service, {clients} clients, 1 sentence/request',
         num('bf16_c_sentences_per_s', unit=' sentences/s')],
        ['(d) service latency p50 / p99', latency('service_latency')],
        ['(d) sentence-transformers latency p50 / p99', latency('st_latency')],
        ['(d) ONNX Runtime fp32 latency p50 / p99', latency('onnx_latency')],
        ['(d) ONNX Runtime int8 latency p50 / p99', latency('onnx_int8_latency')],
        ['(j) -bf16 service latency p50 / p99', latency('bf16_latency')],
        [f'(d) the same, each call after {pause} idle: service / sentence-transformers',
         f"{latency('service_latency_paced')} / {latency('st_latency_paced')}"],
        [f'(d) the same, each call after {pause} idle: ONNX Runtime fp32 / int8',
         f"{latency('onnx_latency_paced')} / {latency('onnx_int8_latency_paced')}"],
        [f'(d) the same, each call after {pause} idle: -bf16 service', latency('bf16_latency_paced')],
        [f'(d) p50 ratios after {pause} idle: service / sentence-transformers, / ONNX Runtime fp32; '
         '-bf16 / ONNX Runtime int8',
         ', '.join(num(k, '{:.2f}') for k in ('ratio_d_p50_paced', 'ratio_d_p50_onnx_paced',
                                              'ratio_bf16_p50_over_int8_paced'))],
        ['(k) service floor (-engine fake) p50 / p99: back to back; each call after ' + pause,
         f"{latency('floor_latency')}; {latency('floor_latency_paced')}"],
        [f'(k) service floor, {clients} clients, 1 sentence/request', num('floor_c_sentences_per_s', unit=' sentences/s')],
        ['(k) the model\'s share of the p50 (p50 - floor): ours; -bf16',
         f"{num('model_share_d_ms', '{:.2f}', ' ms')}; {num('model_share_bf16_ms', '{:.2f}', ' ms')}"],
        [f'(k) what the p50 goals leave the model (target x peer p50 - floor): {goal_target("d_p50_onnx"):g} x ONNX '
         f'Runtime fp32; {goal_target("d_p50"):g} x sentence-transformers; {goal_target("bf16_p50_int8"):g} x int8',
         '; '.join(num(k, '{:.2f}', ' ms') for k in ('model_budget_d_onnx_ms', 'model_budget_d_st_ms',
                                                     'model_budget_bf16_int8_ms'))],
        ['(l) the model alone, no service: one sentence p50 / p99 (tokenizing included), ours; -bf16',
         f"{latency('alone_latency')}; {latency('bf16_alone_latency')}"],
        [f'(l) the model alone: calls of {clients} inputs / one call of every line, sentences/s: ours; -bf16',
         f"{num('alone_c_sentences_per_s')} / {num('alone_one_call_sentences_per_s')}; "
         f"{num('bf16_alone_c_sentences_per_s')} / {num('bf16_alone_one_call_sentences_per_s')}"],
        ['(e) first server start-up', num('first_start_s', '{:.1f}', ' s')],
        ['(e) second server start-up (graph cached)', num('second_start_s', '{:.1f}', ' s')],
        ['(j) -bf16 server start-up', num('bf16_start_s', '{:.1f}', ' s')],
        ['(e) worker RSS after the runs', rss('worker_memory_after_load')],
        ['(e) ventilator (SERVER), sink, proxy RSS after the runs', rss('other_memory_after_load')],
        ['(j) -bf16 worker RSS after its runs', rss('bf16_worker_memory')],
        ['(h) float32 GEMM rate of this machine now (numpy, 2 threads)',
         'n/a' if gemm is None else f'{gemm:.0f} GFLOP/s'],
        ['(h) (b) service, dense-layer FLOP rate', roofline('b_sentences_per_s')],
        ['(h) (f) ONNX Runtime fp32, dense-layer FLOP rate', roofline('onnx_sentences_per_s')],
        [f'vectors: ours {f.get("precision", "fp32")} vs sentence-transformers (cosine)',
         cosines('min_cosine', 'mean_cosine')],
        ['vectors: ONNX Runtime fp32 vs sentence-transformers (cosine)',
         'n/a' if f.get('onnx_min_cosine') is None else f'min {f["onnx_min_cosine"]:.6f}'],
        ['vectors: ONNX Runtime int8 vs ONNX Runtime fp32 (cosine)',
         cosines('onnx_int8_min_cosine', 'onnx_int8_mean_cosine')],
        ['vectors: -bf16 vs ours fp32 (cosine)', cosines('bf16_min_cosine', 'bf16_mean_cosine')],
        ['vectors: (i) bert-serving-encode vs one encode, max |diff|', num('encode_cli_max_abs_diff', '{:.1e}')],
    ]
    header = [h.format(clients=clients) for h in SUMMARY_HEADER]
    summary = _table(header, summary_rows(f))
    cosine_note = (f'{onnx}; int8 = quantize_dynamic, QInt8 weights. Min cosine over the {sentences} sentences, '
                   'each against its fp32 reference: sentence-transformers (a) for ONNX Runtime fp32 and our first '
                   f'server ({f.get("precision", "fp32")}), '
                   'ONNX Runtime fp32 for its int8, ours fp32 for -bf16.')
    goal_rows = [[g['label'], _measured(g.get('figure', ''), g['measured']), g['target'],
                  {True: 'PASS', False: 'MISS', None: 'n/a'}[g['pass']]
                  + (' (out of reach)' if g['pass'] is False and g.get('reachable') is False else ''),
                  '-' if g.get('bound') is None else _measured(g['figure'], g['bound'])] for g in goals]
    note = ('Server: -max_seq_len 128 -pooling_layer -1 -pooling_strategy REDUCE_MEAN, so it runs all 6 layers '
            'like sentence-transformers (the default -pooling_layer -2 runs 5).')
    bound_note = ('(l) column: the same ratio with the model alone in a process of its own, no service: the best the '
                  'goal could measure. "Out of reach": the model alone misses the target on this machine.')
    return '\n\n'.join([summary, cosine_note,
                        _table(['goal', 'measured', 'target', 'result', '(l) model alone'], goal_rows), bound_note,
                        _table(['figure', 'value'], rows), note])
