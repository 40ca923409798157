"""Kubernetes sources: conversion of API objects, the manifest directory, the API watch."""
