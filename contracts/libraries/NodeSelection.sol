// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Packed hardware-group counters and the weighted draw over them
/// @notice The registry keeps its Available nodes in dense sets, one per (hardware group,
///         QoS level). A hardware group is a (gpu hash, vram) pair; the QoS level is the
///         node's QoS rounded to an integer 0..10 and is also its selection weight. One
///         storage word per group packs its VRAM, its registered-node count and the sizes of
///         its 11 level sets; a directory packs (VRAM, total weight) of 5 groups per word. A
///         draw reads the directory (or, for a named GPU, one lane), picks a group with
///         probability weight / total, reads that group's word, picks a level with
///         probability count x level / group weight, then a uniform member.
///
///         Group word layout (bit offsets):
///           [0, 220)   11 counts of 20 bits: Available nodes at level 0..10
///           [220, 240) registered (not Quit) nodes in the group, 20 bits
///           [240, 256) VRAM in GB, 16 bits
library NodeSelection {
    /// @notice Number of QoS levels (weights 0..10).
    uint256 internal constant LEVELS = 11;
    /// @notice Highest level (and weight).
    uint256 internal constant MAX_LEVEL = 10;
    /// @notice Fixed-point unit of QoS: 1e6 = a QoS of 1.0.
    uint256 internal constant QOS_ONE = 1e6;
    /// @notice The highest QoS, 10.0, which a new node starts with.
    uint256 internal constant MAX_QOS = 10 * QOS_ONE;

    uint256 internal constant COUNT_BITS = 20;
    uint256 internal constant COUNT_MASK = (1 << COUNT_BITS) - 1;
    uint256 internal constant NODES_SHIFT = 220;
    uint256 internal constant VRAM_SHIFT = 240;

    /// @notice The weight level of a QoS: rounded half up to an integer 0..10.
    function levelOf(uint256 qos) internal pure returns (uint256) {
        return (qos + QOS_ONE / 2) / QOS_ONE;
    }

    /// @notice Available nodes of the group at `level`.
    function count(uint256 word, uint256 level) internal pure returns (uint256) {
        return (word >> (level * COUNT_BITS)) & COUNT_MASK;
    }

    /// @notice `word` with one more (up) or one fewer (!up) Available node at `level`.
    ///         The caller checks the bounds (no wrap: a wrap would corrupt the neighbour).
    function bump(uint256 word, uint256 level, bool up) internal pure returns (uint256) {
        uint256 one = 1 << (level * COUNT_BITS);
        return up ? word + one : word - one;
    }

    /// @notice Registered (not Quit) nodes of the group.
    function nodes(uint256 word) internal pure returns (uint256) {
        return (word >> NODES_SHIFT) & COUNT_MASK;
    }

    /// @notice `word` with one more (up) or one fewer (!up) registered node.
    function bumpNodes(uint256 word, bool up) internal pure returns (uint256) {
        uint256 one = 1 << NODES_SHIFT;
        return up ? word + one : word - one;
    }

    /// @notice VRAM (GB) of the group.
    function vram(uint256 word) internal pure returns (uint16) {
        return uint16(word >> VRAM_SHIFT);
    }

    /// @notice A fresh group word for `vramGb`.
    function newWord(uint16 vramGb) internal pure returns (uint256) {
        return uint256(vramGb) << VRAM_SHIFT;
    }

    /// @notice Sum of level x count over the levels of the group.
    function weight(uint256 word) internal pure returns (uint256 w) {
        unchecked {
            for (uint256 l = 1; l <= MAX_LEVEL; ++l) {
                w += ((word >> (l * COUNT_BITS)) & COUNT_MASK) * l;
            }
        }
    }

    /// @notice Available nodes of the group, all levels.
    function available(uint256 word) internal pure returns (uint256 n) {
        unchecked {
            for (uint256 l = 0; l <= MAX_LEVEL; ++l) {
                n += (word >> (l * COUNT_BITS)) & COUNT_MASK;
            }
        }
    }

    /// @notice Key of member `index` of the set (group, level) in the registry's member map.
    function memberKey(uint256 groupId, uint256 level, uint256 index) internal pure returns (uint256) {
        return (groupId << 32) | (level << 24) | index;
    }

    // ------------------------------------------------------------- directory

    /// @notice Groups per directory word. A directory lane (48 bits) holds a group's VRAM (low
    ///         16 bits) and its total weight (sum of level x count, 32 bits), so a draw over
    ///         any GPU reads one word per 5 groups, then only the chosen group's word.
    uint256 internal constant LANES = 5;
    uint256 internal constant LANE_BITS = 48;

    /// @notice Directory word index and bit offset of group `groupId` (1-based).
    function lane(uint256 groupId) internal pure returns (uint256 slot, uint256 shift) {
        unchecked {
            slot = (groupId - 1) / LANES;
            shift = ((groupId - 1) % LANES) * LANE_BITS;
        }
    }

    /// @notice VRAM of the group in lane `shift` of directory word `dir`.
    function laneVram(uint256 dir, uint256 shift) internal pure returns (uint256) {
        return (dir >> shift) & 0xffff;
    }

    /// @notice Total weight of the group in lane `shift` of directory word `dir`.
    function laneWeight(uint256 dir, uint256 shift) internal pure returns (uint256) {
        return (dir >> (shift + 16)) & 0xffffffff;
    }

    /// @notice `dir` with `level` added to (up) or taken from (!up) the lane's total weight.
    function laneBump(uint256 dir, uint256 shift, uint256 level, bool up) internal pure returns (uint256) {
        uint256 delta = level << (shift + 16);
        return up ? dir + delta : dir - delta;
    }

    // ------------------------------------------------------------- draw

    /// @notice Finds where a point `x` in [0, weight(word)) falls inside a group: the level
    ///         and the index in that level's set (each member of level l spans l units).
    function locateLevel(uint256 word, uint256 x) internal pure returns (uint256 level, uint256 index) {
        unchecked {
            for (level = 1; level < MAX_LEVEL; ++level) {
                uint256 lw = ((word >> (level * COUNT_BITS)) & COUNT_MASK) * level;
                if (x < lw) break;
                x -= lw;
            }
            index = x / level;
        }
    }
}
