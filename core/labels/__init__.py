"""The labeling spec: the user's tasks and fields as data (`spec`), read and checked (`loader`),
and turned into tasks and label sets (`derive`)."""
