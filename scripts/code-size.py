#!/usr/bin/env python3
"""Code-size figures for the layout targets: every non-test Rust function over a limit (default
80 lines) and every file whose non-test part is over 700 lines. A small tokenizer skips strings,
raw strings, chars and comments, then matches the braces of each `fn` item.

    python3 scripts/code-size.py [ROOT] [LIMIT]
"""
import re, sys, os
root = sys.argv[1] if len(sys.argv) > 1 else '.'
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 80
fn_re = re.compile(r'\bfn\s+(\w+)')

def strip(text):
    """Replace strings, chars and comments by spaces, keeping newlines."""
    out = []; i = 0; n = len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i); j = n if j < 0 else j
            out.append(' ' * (j - i)); i = j
        elif text.startswith('/*', i):
            j = text.find('*/', i); j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', text[i:j])); i = j
        elif c == 'r' and re.match(r'r#*"', text[i:i+10]) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == '_')):
            m = re.match(r'r(#*)"', text[i:]); hashes = m.group(1)
            end = text.find('"' + hashes, i + len(m.group(0))); end = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r'[^\n]', ' ', text[i:end])); i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            out.append(re.sub(r'[^\n]', ' ', text[i:j+1])); i = j + 1
        elif c == "'":
            m = re.match(r"'(\\(x..|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", text[i:i+12])
            if m:
                out.append(' ' * len(m.group(0))); i += len(m.group(0))
            else:
                out.append(c); i += 1
        else:
            out.append(c); i += 1
    return ''.join(out)

rows = []; files = []
for dp, dn, fnames in os.walk(root):
    dn[:] = [d for d in dn if d not in ('target', '.git', '.tools', 'results')]
    for f in fnames:
        if not f.endswith('.rs'): continue
        p = os.path.join(dp, f)
        raw = open(p, encoding='utf-8', errors='replace').read()
        text = strip(raw)
        lines = raw.split('\n')
        is_test_file = any(s in p for s in ('/tests/', '/benches/', '/examples/'))
        test_start = next((i for i, l in enumerate(lines) if l.startswith('#[cfg(test)]')), None)
        files.append((test_start if test_start is not None else len(lines), p, is_test_file))
        for m in fn_re.finditer(text):
            start_line = text.count('\n', 0, m.start())
            k = m.end(); depth = 0
            while k < len(text) and text[k] not in '{;':
                k += 1
            if k >= len(text) or text[k] == ';':
                continue
            while k < len(text):
                if text[k] == '{': depth += 1
                elif text[k] == '}':
                    depth -= 1
                    if depth == 0: break
                k += 1
            end_line = text.count('\n', 0, k)
            test = is_test_file or (test_start is not None and start_line > test_start)
            rows.append((end_line - start_line + 1, p, start_line + 1, m.group(1), test))
rows.sort(reverse=True)
print(f'functions over {limit} lines (non-test):')
for n, p, ln, name, test in rows:
    if n > limit and not test: print(f'  {n:4} {p}:{ln} {name}')
print('longest non-test function:', next(((n, p, name) for n, p, ln, name, t in rows if not t), None))
print('files over 700 lines (non-test part):')
for n, p, t in sorted(files, reverse=True):
    if n > 700 and not t: print(f'  {n:5} {p}')
