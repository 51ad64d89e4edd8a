"""The ten TenGeoP-SARwv classes (Wang et al. 2019): one definition for the readers, the synthetic archive and the
reports. Letters F..O are the dataset's folder names and the class codes of 58682.txt / 58683.txt; class_idx is
the position in CLASS_LETTERS.
"""

CLASS_LETTERS = "FGHIJKLMNO"
CLASS_NAMES = ["Pure Ocean Waves", "Wind Streaks", "Micro Convective Cells", "Rain Cells", "Biological Slicks",
               "Sea Ice", "Iceberg", "Low Wind Area", "Atmospheric Front", "Oceanic Front"]
NAME_OF_LETTER = dict(zip(CLASS_LETTERS, CLASS_NAMES))
