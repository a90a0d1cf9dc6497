"""Style templates: the prompt enrichment both the enricher and POST /v1/enrich apply."""

from __future__ import annotations

from schemas.catalog import Style


class UnknownStyle(KeyError):
    """The style is not in the catalog; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def enrich_prompt(
    prompt: str, negative_prompt: str | None, style: str | None, styles: dict[str, Style]
) -> tuple[str, str | None]:
    """(prompt, negative prompt) after applying `style`; both pass through when no style is asked."""
    if not style:
        return prompt, negative_prompt
    try:
        chosen = styles[style]
    except KeyError:
        raise UnknownStyle(f"unknown style {style!r}; valid styles: {', '.join(sorted(styles))}") from None
    enriched = chosen.template.replace("{prompt}", prompt.strip())
    negatives = [part for part in (negative_prompt, chosen.negative_prompt) if part]
    return enriched, ", ".join(negatives) or None
