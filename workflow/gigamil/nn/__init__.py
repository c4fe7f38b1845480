"""Neural-network building blocks: patch encoders, augmentation, attention pooling, losses."""
