"""Just enough of IAM's policy evaluation to check the templates' statements against request
contexts: a statement's conditions (the operators the templates use, with IAM's rules for keys
the request does not carry) and a template's intrinsic functions for given parameters.

Absent keys, as IAM treats them: a positive operator (StringEquals, ArnEquals, ArnLike, Bool)
is false; a negated one (StringNotEquals, ArnNotEquals, ArnNotLike) is true; `Null: "false"`
(the key is present) is false, `Null: "true"` is true; ForAllValues is true (vacuously),
ForAnyValue false. Keys within one operator, and operators within one Condition, must all hold;
the values listed for one key are alternatives."""

import fnmatch

NO_VALUE = object()


def render(node, refs, conditions=None):
    """The template fragment with Ref, Fn::If, Fn::Join, Fn::Split, Fn::Sub (plain ${Name}) and
    Fn::GetAtt (as "<Resource>.<Attr>") resolved; AWS::NoValue drops the element."""
    conditions = conditions or {}
    if isinstance(node, list):
        out = [render(n, refs, conditions) for n in node]
        flat = []
        for o in out:
            if o is NO_VALUE:
                continue
            flat.append(o)
        return flat
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (k, v), = node.items()
        if k == "Ref":
            return NO_VALUE if v == "AWS::NoValue" else refs[v]
        if k == "Fn::If":
            name, yes, no = v
            return render(yes if conditions[name] else no, refs, conditions)
        if k == "Fn::GetAtt":
            return f"{v[0]}.{v[1]}"
        if k == "Fn::Join":
            sep, items = v
            items = render(items, refs, conditions)
            return sep.join(i if isinstance(i, str) else sep.join(i) for i in items)
        if k == "Fn::Split":
            sep, text = v
            return render(text, refs, conditions).split(sep)
        if k == "Fn::Sub":
            text = v
            for name, value in refs.items():
                if isinstance(value, str):
                    text = text.replace("${" + name + "}", value)
            return text
        if k == "Fn::Condition":
            return conditions[v]
    out = {}
    for k, v in node.items():
        r = render(v, refs, conditions)
        if r is not NO_VALUE:
            out[k] = r
    return out


def _values(v):
    return v if isinstance(v, list) else [v]


def _match(op, want, have):
    base = op.replace("IfExists", "")
    if base in ("StringEquals", "ArnEquals"):
        return have in want if base == "StringEquals" else any(fnmatch.fnmatchcase(have, w) for w in want)
    if base in ("ArnLike", "StringLike"):
        return any(fnmatch.fnmatchcase(have, w) for w in want)
    if base == "Bool":
        return str(have).lower() in [str(w).lower() for w in want]
    raise NotImplementedError(op)


def condition_holds(condition, context):
    """Whether a statement's Condition holds for a request context ({key: value or [values]})."""
    for op, keys in (condition or {}).items():
        for key, want in keys.items():
            want = _values(want)
            present = key in context
            if op == "Null":
                if (want[0] == "true") != (not present):
                    return False
                continue
            qualifier, _, base = op.rpartition(":")
            negated = "Not" in base
            positive = base.replace("Not", "")
            if not present:
                if qualifier == "ForAllValues" or negated:
                    continue
                return False
            have = _values(context[key])
            if qualifier == "ForAllValues":
                ok = all(_match(positive, want, h) for h in have)
            elif qualifier == "ForAnyValue":
                ok = any(_match(positive, want, h) for h in have)
            else:
                ok = _match(positive, want, have[0])
            if ok == negated:
                return False
    return True


def applies(statement, action, resource, context):
    """Whether the statement covers the action and resource, and its conditions hold."""
    actions = _values(statement.get("Action", []))
    if not any(fnmatch.fnmatchcase(action, a) for a in actions):
        return False
    resources = _values(statement.get("Resource", "*"))
    if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
        return False
    return condition_holds(statement.get("Condition"), context)


def decide(statements, action, resource, context):
    """"Deny" if a Deny applies, else "Allow" if an Allow does, else "ImplicitDeny"."""
    hits = [s["Effect"] for s in statements if applies(s, action, resource, context)]
    return "Deny" if "Deny" in hits else "Allow" if "Allow" in hits else "ImplicitDeny"
