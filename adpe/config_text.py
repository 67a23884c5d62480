"""Reading the config text that mmengine saves (``meta['cfg']`` of checkpoints, a work dir's dumped config).

Only literals and ``dict(...)`` calls are evaluated, nothing is executed, and no OpenMMLab module is needed.
"""

from __future__ import annotations

import ast


def config_model(cfg_text: str) -> dict:
    """The ``model = dict(...)`` of a saved config's text (mmengine's ``meta['cfg']``), as a plain dict.

    Reads literals and ``dict(...)`` calls only, without executing anything; {} when there is no such
    assignment.
    """
    try:
        tree = ast.parse(cfg_text)
    except SyntaxError as err:
        raise ValueError(f"saved config text does not parse as Python: {err}") from err
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model" for t in node.targets):
            model = _config_value(node.value)
            return model if isinstance(model, dict) else {}
    return {}


def _config_value(node: ast.AST):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _config_value(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Dict):
        return {_config_value(k): _config_value(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_config_value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None  # an expression we do not evaluate (e.g. a variable): not a model argument we read
