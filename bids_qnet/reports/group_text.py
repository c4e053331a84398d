"""Words of the group report: figure captions, the methods paragraph and its references."""

from __future__ import annotations

from bids_qnet.config.sections import max_ig_steps
from bids_qnet.outputs import names

CITATIONS = (
    "Zabihi et al. Q-Net: deep learning classification of hereditary hemochromatosis from QSM, "
    "R2* and T1w images of the basal ganglia (the method bids_qnet implements).",
    "He K, Zhang X, Ren S, Sun J. Deep residual learning for image recognition. CVPR 2016.",
    "Izmailov P, Podoprikhin D, Garipov T, Vetrov D, Wilson AG. Averaging weights leads to "
    "wider optima and better generalization. UAI 2018.",
    "Hochreiter S, Schmidhuber J. Long short-term memory. Neural Comput 1997;9:1735-1780.",
    "DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more correlated "
    "receiver operating characteristic curves: a nonparametric approach. Biometrics "
    "1988;44:837-845.",
    "Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under "
    "correlated receiver operating characteristic curves. IEEE Signal Process Lett 2014;21:1389.",
    "Obuchowski NA. Nonparametric analysis of clustered ROC curve data. Biometrics "
    "1997;53:567-578.",
    "Holm S. A simple sequentially rejective multiple test procedure. Scand J Stat 1979;6:65-70.",
    "Robin X et al. pROC: an open-source package for R and S+ to analyze and compare ROC "
    "curves. BMC Bioinformatics 2011;12:77.",
    "Sundararajan M, Taly A, Yan Q. Axiomatic attribution for deep networks (Integrated "
    "Gradients). ICML 2017.",
    "Selvaraju RR et al. Grad-CAM: visual explanations from deep networks via gradient-based "
    "localization. ICCV 2017.",
    "Kokhlikyan N et al. Captum: a unified and generic model interpretability library for "
    "PyTorch. arXiv:2009.07896, 2020.",
    "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration "
    "with cross-correlation. Med Image Anal 2008;12:26-41 (ANTs, through antspyx).",
)

# Heading and caption of each group figure, by file name.
FIGURE_TEXT = {
    names.ROC_FIGURE.format(level="scan"): (
        "ROC, scan level",
        "Out-of-fold ROC curves, one point per participant scan, pooled over the test folds.",
    ),
    names.ROC_FIGURE.format(level="image"): (
        "ROC, image level",
        "Out-of-fold ROC curves, one point per slice, pooled over the test folds.",
    ),
    names.AUC_BOXPLOT.format(level="scan"): (
        "Bootstrap AUC, scan level",
        "AUC over stratified bootstrap replicates (participants resampled within each class). "
        "Brackets: paired DeLong tests, Holm-adjusted; **** p<=1e-4, *** p<=1e-3, ** p<=0.01, "
        "* p<=0.05, ns otherwise.",
    ),
    names.AUC_BOXPLOT.format(level="image"): (
        "Bootstrap AUC, image level",
        "AUC over bootstrap replicates resampling whole participants (all their slices) within "
        "each class. Brackets: clustered paired comparisons, Holm-adjusted.",
    ),
    names.IG_OVERLAY: (
        "Integrated Gradients through Q-Net",
        "Class-average attribution of each participant's slices, computed with the fold model "
        "that did not see the participant, mapped back to template space and drawn over the "
        "template; axial slices through the basal ganglia, neurological orientation (left on "
        "the left).",
    ),
    names.GRADCAM_OVERLAY: (
        "Grad-CAM on the stage-1 network",
        "Class-average Grad-CAM of ResNetSWA's last convolutional block (coarse: 7x7 cells at "
        "224 px), mapped back to template space.",
    ),
    names.IG_REGIONS_BARPLOT: (
        "Relevance per atlas region",
        "Integrated Gradients relevance summarised over the atlas labels inside the crop, per "
        "channel and class.",
    ),
}


def methods_paragraph(settings: dict, labels: dict | None) -> str:
    """Return the methods text of the group report, filled from the run's settings.

    Parameters
    ----------
    settings : dict
        ``Settings.to_dict()`` of the group run.
    labels : dict or None
        ``desc-cv_labels.json`` (column, classes, positive class).

    Returns
    -------
    str
        One paragraph naming every method with its reference and the settings used.
    """
    get = settings.get
    classes = " vs ".join(map(str, labels["classes"])) if labels else "the classes"
    channels = ", ".join(get("channels") or [])
    stage1 = (
        f"a ResNet18 (He et al. 2016; initial weights: {get('embedding_weights')}) was fine-tuned "
        f"on the training folds' slices for {get('epochs')} epochs with data augmentation, and "
        "its weights were averaged over the last epochs with Stochastic Weight Averaging "
        "(Izmailov et al. 2018), BatchNorm statistics recomputed (ResNet: last epoch; ResNetSWA: "
        "averaged weights)"
        if get("stage1") == "train"
        else f"the participant-level ResNet18 embeddings ({get('embedding_weights')} weights) "
        "were used unchanged (stage 1 frozen)"
    )
    attribution = (
        "Integrated Gradients (Sundararajan et al. 2017, captum) were computed through the "
        f"whole Q-Net back to the input slices ({get('ig_steps')} steps, "
        f"{_max_steps(get)} for a path whose attributions did not add up to the output change "
        "within 5 %, "
        f"{get('ig_baseline')} baseline, target: the {get('attribution_target')} class) with "
        "the fold model that had not seen the participant, alongside Grad-CAM (Selvaraju et al. "
        "2017) on the stage-1 network; maps were put back on the template grid and summarised "
        "per atlas region. "
        if get("attribution", "ig") != "none"
        else ""
    )
    return (
        f"Participants ({classes}) were classified from axial slices of {channels} in "
        "MNI152NLin2009cAsym space, registered with ANTs (Avants et al. 2008) and cropped "
        "around the basal ganglia, following Q-Net (Zabihi et al.). In stage 1 "
        f"{stage1}. In stage 2 the 512-d slice embeddings of each scan fed a one-layer "
        "bidirectional LSTM (Hochreiter and Schmidhuber 1997) with an image-level and a "
        f"scan-level head, trained for {get('qnet_epochs')} epochs. Performance was estimated by "
        f"{get('folds')}-fold cross-validation by participant (stratified by class, "
        f"{get('cv_repeats')} repeat(s), seed {get('random_seed')}). AUCs of the models were "
        "compared with paired DeLong tests (DeLong et al. 1988; Sun and Xu 2014) at the scan "
        "level and with a clustered method for slices within participants (Obuchowski 1997) at "
        "the image level, p-values Holm-adjusted (Holm 1979); AUC distributions come from "
        f"{get('bootstrap_replicates')} stratified bootstrap replicates resampling participants "
        f"(as pROC, Robin et al. 2011). {attribution}"
        f"Computed with bids_qnet {get('version')}."
    )


def statistics_note(settings: dict, labels: dict | None) -> list[str]:
    """Return how to read the performance and comparison tables, in plain words.

    Parameters
    ----------
    settings : dict
        ``Settings.to_dict()`` of the group run.
    labels : dict or None
        ``desc-cv_labels.json``.

    Returns
    -------
    list of str
        Short paragraphs.
    """
    classes = [str(c) for c in labels["classes"]] if labels else []
    if len(classes) == 2:
        positive = labels.get("positive") or classes[1]
        other = classes[0] if positive == classes[1] else classes[1]
        auc = (
            f"The AUC is the chance that the model scores a randomly chosen {positive} "
            f"participant higher than a randomly chosen {other} participant: 0.5 is guessing, "
            "1 is a perfect separation."
        )
    else:
        auc = "The AUC (0.5 is guessing, 1 perfect separation) averages one class against the rest."
    replicates = settings.get("bootstrap_replicates")
    return [
        "Every prediction comes from a model that did not see the participant during training "
        "(out-of-fold): the figures estimate how the method would do on new participants of "
        "the same kind. Sensitivity is the share of positive participants recognised, "
        "specificity the share of the others recognised; in brackets, the mean ± standard "
        "deviation over the folds.",
        auc,
        f"The 95% interval comes from redrawing the participants {replicates} times, within "
        "each class: a wide interval means the data cannot pin the AUC down.",
        "Two models are compared on the same participants (a paired test): DeLong's test for "
        "the scan level, and at the image level a version that counts the slices of one "
        "participant as one unit, since they are not independent. The p-value is the chance "
        "of a difference at least this large if the two models were equally good; with several "
        "comparisons it is adjusted (Holm), and the stars mark adjusted p ≤ 0.05 (*), 0.01 (**), "
        "0.001 (***) and 0.0001 (****); ns: no detectable difference, which is not proof that "
        "the models are equal.",
    ]


def _max_steps(get) -> str:
    """``up to N`` of the methods text (``--ig-max-steps`` or its default)."""
    steps = get("ig_steps")
    if not isinstance(steps, int):
        return "more"
    return f"up to {max_ig_steps(steps, get('ig_max_steps'))}"
