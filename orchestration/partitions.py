"""One dynamic partition per drop: a sub-folder of the drop root, or a batch of loose files."""

import dagster as dg

image_drops = dg.DynamicPartitionsDefinition(name="image_drops")
