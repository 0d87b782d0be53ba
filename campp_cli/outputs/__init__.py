"""What a run writes: each image's files (:mod:`.files`) and the HTML report (:mod:`.report`, :mod:`.report_cards`)."""
