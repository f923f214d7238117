"""medistill."""
