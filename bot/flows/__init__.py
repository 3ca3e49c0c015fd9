"""Dialogue flows as data: the YAML files beside this module, their schema and their loader."""

from bot.flows.schema import ChoiceSpec, CommandSpec, FlowSpec, StateSpec, load_flow, load_flows

__all__ = ["ChoiceSpec", "CommandSpec", "FlowSpec", "StateSpec", "load_flow", "load_flows"]
