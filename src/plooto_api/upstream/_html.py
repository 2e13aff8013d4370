"""Just enough HTML reading for the login pages: forms, their inputs, and data-* markers."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Form:
    """A <form>: its attributes and the values of its named inputs."""

    attrs: dict[str, str]
    inputs: dict[str, str] = field(default_factory=dict)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: dict[str, Form] = {}
        self.markers: dict[str, str] = {}  # first value of each data-* attribute on the page
        self._form: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values: dict[str, str] = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            if name.startswith("data-"):
                self.markers.setdefault(name, value)
        if tag == "form":
            self._form = Form(values)
            self.forms[values.get("id", f"form-{len(self.forms)}")] = self._form
        elif tag in {"input", "button", "textarea", "select"} and self._form is not None:
            input_name = values.get("name")
            if input_name and values.get("type") not in {"checkbox", "radio"}:
                self._form.inputs[input_name] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


@dataclass
class Page:
    """A parsed HTML page."""

    forms: dict[str, Form]
    markers: dict[str, str]

    def marker(self, name: str) -> str | None:
        return self.markers.get(name)


def parse_page(html: str) -> Page:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return Page(parser.forms, parser.markers)
