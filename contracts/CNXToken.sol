// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Capped} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Capped.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title CNX, the Crynux network token
/// @notice ERC-20 with EIP-2612 permit and a hard cap of 8,617,333,262 CNX. 20% of the
///         cap is minted to a treasury at deployment; the other 80% can only be minted by
///         holders of MINTER_ROLE (the node-mining and task-mining emission contracts).
contract CNXToken is ERC20Capped, ERC20Permit, AccessControl {
    /// @notice Role allowed to mint out of the emission share (80% of the cap).
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @notice The hard cap on total supply, in wei (18 decimals).
    uint256 public constant CAP = 8_617_333_262 ether;

    /// @notice The share of the cap minted to the treasury at deployment (20%).
    uint256 public constant GENESIS_SUPPLY = CAP / 5;

    /// @notice Thrown when the treasury given at deployment is the zero address.
    error CNXZeroTreasury();

    /// @param admin Receives DEFAULT_ADMIN_ROLE (grants MINTER_ROLE to the emission contracts).
    /// @param treasury Receives the genesis 20%.
    constructor(address admin, address treasury) ERC20("Crynux", "CNX") ERC20Capped(CAP) ERC20Permit("Crynux") {
        if (treasury == address(0)) revert CNXZeroTreasury();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _mint(treasury, GENESIS_SUPPLY);
    }

    /// @notice Mints `amount` to `to`; only MINTER_ROLE, never past the cap.
    /// @param to Receiver of the new tokens.
    /// @param amount Amount in wei.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }

    /// @notice What can still be minted before the cap is reached.
    function mintable() external view returns (uint256) {
        return CAP - totalSupply();
    }

    /// @dev Every balance change flows through ERC20Capped's hook, which reverts with
    ///      ERC20ExceededCap(newSupply, cap) when a mint would pass the cap.
    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Capped) {
        super._update(from, to, value);
    }
}
