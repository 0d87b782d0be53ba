"""What a run writes besides its figures: the HTML report (``--report FILE.html``)."""
