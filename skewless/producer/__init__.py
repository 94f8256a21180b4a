"""Event generator (pure, seeded) and Kafka producer for event sources (``skewless produce``)."""

from skewless.producer.generator import GeneratedRecord, GeneratorConfig, Manifest, generate, partition_for

__all__ = ["GeneratedRecord", "GeneratorConfig", "Manifest", "generate", "partition_for"]
