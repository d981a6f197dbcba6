"""Domain services: the rules of wxplatform, free of transport and storage libraries."""
