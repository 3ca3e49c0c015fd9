"""`python -m bot graph`: the flows as a Mermaid diagram, for staff to review the questions."""

from __future__ import annotations

from bot.flows.schema import FlowSpec
from bot.pack.loader import Pack


def _node(name: str) -> str:
    return name.replace("-", "_")


def mermaid(flow: FlowSpec, pack: Pack, lang: str = "ja") -> str:
    lines = ["flowchart TD"]
    for name, state in flow.states.items():
        prompt = str(pack.msg(state.prompt, lang)).splitlines()[0].replace('"', "'")[:40]
        lines.append(f'  {_node(name)}["{name}<br/>{prompt}"]')
    for name, state in flow.states.items():
        for choice in [*state.choices, *state.extra]:
            label = str(pack.msg(choice.label, lang)).replace('"', "'")
            if choice.next:
                lines.append(f'  {_node(name)} -- "{label}" --> {_node(choice.next)}')
        for value, dest in state.next_by_value.items():
            label = pack.categories[value].label.get(lang) if value in pack.categories else value
            lines.append(f'  {_node(name)} -- "{label}" --> {_node(dest)}')
        if state.choices_from and state.next:
            label = f"({state.choices_from})"
            lines.append(f'  {_node(name)} -- "{label}" --> {_node(state.next)}')
        if state.then:
            lines.append(f'  {_node(name)} -. "x{state.repeat}" .-> {_node(state.then)}')
    return "\n".join(lines) + "\n"
