"""The store worker: pull, push and create jobs, and the registry client they use."""
