"""The service's logic. Imports no grpc."""
